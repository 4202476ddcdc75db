"""What the benchmark scripts share: their command line and CUDA synchronisation.

Imported by the scripts of this folder (run as ``python bench/<script>.py``,
which puts the folder on ``sys.path``).
"""

from __future__ import annotations

import argparse

import torch


def sync(device: str) -> None:
    """Wait for the GPU's queued work (nothing on a CPU), so wall times are complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the script's docstring, with the options every benchmark has."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--source", default="standin", choices=["standin", "real", "auto"])
    return p
