"""Fixtures of the book tests: one build of the book per session, its pages, a local server.

The book is built once per pytest session with ``tools/build_book.sh``, from
the notebooks' committed outputs (``BOOK_EXECUTE=off``: nbval executes every
solution notebook in the same test run; set ``BOOK_TEST_EXECUTE=1`` to execute
them in the book build too), unless ``BOOK_BUILD_DIR`` names an existing build:
either its ``html`` folder or the ``_build`` folder that holds it.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from book_helpers import ROOT, toc_docnames

BUILD_TIMEOUT_S = int(os.environ.get("BOOK_BUILD_TIMEOUT", "5400"))


def _existing_build(value: str) -> Path:
    path = Path(value).resolve()
    for candidate in (path, path / "html"):
        if (candidate / "index.html").is_file():
            return candidate
    raise pytest.UsageError(f"BOOK_BUILD_DIR={value}: no index.html there nor in its html/ folder")


@pytest.fixture(scope="session")
def book_html() -> Path:
    """The built site (``_build/html``), built once per session."""
    if os.environ.get("BOOK_BUILD_DIR"):
        return _existing_build(os.environ["BOOK_BUILD_DIR"])
    log = ROOT / "_build" / "book-build.log"
    log.parent.mkdir(exist_ok=True)
    env = dict(os.environ)
    # By default the suite renders the committed outputs (nbval executes every
    # notebook in the same run); BOOK_TEST_EXECUTE=1 executes them again here.
    if os.environ.get("BOOK_TEST_EXECUTE", "") in ("", "0"):
        env["BOOK_EXECUTE"] = "off"
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        env["VENV"] = sys.prefix  # build with the environment running the tests
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", str(ROOT / "tools" / "build_book.sh")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
        )
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    if proc.returncode != 0:
        pytest.fail(f"the book build failed (exit {proc.returncode}); log: {log}\n{tail}", pytrace=False)
    print(f"\nbook built in {time.monotonic() - start:.0f} s (log: {log})")
    return ROOT / "_build" / "html"


@pytest.fixture(scope="session")
def book_pages(book_html: Path) -> dict[str, Path]:
    """docname -> built HTML file, for the root and every page in _toc.yml."""
    root, pages = toc_docnames()
    found = {}
    for docname in [root, *pages]:
        path = book_html / f"{docname}.html"
        assert path.is_file(), f"{docname} is in _toc.yml but {path} was not built"
        found[docname] = path
    return found


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


@pytest.fixture(scope="session")
def book_server(book_html: Path):
    """The built site served on 127.0.0.1 (a free port) for the session; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(book_html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def screenshot_dir(book_html: Path) -> Path:
    """``_build/screenshots`` (next to the ``html`` folder of the build under test)."""
    path = book_html.parent / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
