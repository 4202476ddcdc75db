"""What the benchmark scripts share: their command line, CUDA synchronisation, the
reference matmul rate and a peak-memory probe.

Imported by the scripts of this folder (run as ``python bench/<script>.py``,
which puts the folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import ctypes
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def sync(device: str) -> None:
    """Wait for the GPU's queued work (nothing on a CPU), so wall times are complete."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the script's docstring, with the options every benchmark has."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--source", default="standin", choices=["standin", "real", "auto"])
    return p


#: The reference GEMM: float32 [2048, 768] @ [768, 3072], the MLP's shape.
MATMUL_SHAPE = (2048, 768, 3072)


def matmul_flops_per_s(device: str, repeats: int = 10) -> dict[str, float]:
    """Throughput of the reference GEMM (:data:`MATMUL_SHAPE`), in FLOP/s (best of 3 batches), by kernel:
    ``"torch.mm"``, and on a CPU also ``"course"``, the course's own product
    (:func:`exercises_lib.patching_fast_path._linear`: oneDNN's kernel where PyTorch has it), which
    runs faster than ``torch.mm`` on some CPUs. The FLOP limit uses the faster of the two."""
    from exercises_lib.patching_fast_path import _linear

    n, d, m = MATMUL_SHAPE
    a = torch.randn(n, d, device=device)
    b = torch.randn(d, m, device=device)
    kernels = {"torch.mm": lambda: a @ b}
    if not str(device).startswith("cuda"):
        kernels["course"] = lambda: _linear(a, b, None)
    rates = {}
    with torch.no_grad():
        for name, product in kernels.items():
            product()
            sync(device)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    product()
                sync(device)
                best = min(best, time.perf_counter() - t0)
            rates[name] = 2 * n * d * m * repeats / best
    return rates


def timed(fn, device: str):
    """``(fn(), wall seconds)``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_reader():
    """A function returning the bytes the C heap has handed out and not taken back
    (glibc ``mallinfo2``: ``uordblks + hblkhd``), or None where that is not available."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2

    def read() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return read


class _AfterEveryOp(TorchDispatchMode):
    def __init__(self, read):
        super().__init__()
        self.read, self.peak = read, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.read())
        return out


def peak_extra_bytes(fn, device: str) -> tuple[float, str]:
    """Run ``fn()`` once and return (peak extra bytes, what was measured).

    On CUDA: ``torch.cuda.max_memory_allocated`` over its value before the call.
    On the CPU: the C heap in use (glibc ``mallinfo2``, ``uordblks + hblkhd``:
    every tensor's buffer and every Python object, freed memory excluded)
    read after every ATen operation, peak minus the value before the call.
    Temporary buffers that live only inside one operation are not seen.
    """
    if str(device).startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return float(torch.cuda.max_memory_allocated() - base), "CUDA max_memory_allocated"
    read = _heap_reader()
    if read is None:
        return float("nan"), "unavailable (no glibc mallinfo2)"
    mode = _AfterEveryOp(read)
    base = read()
    mode.peak = base
    with mode:
        fn()
    return float(mode.peak - base), "C heap in use after every op (mallinfo2)"
