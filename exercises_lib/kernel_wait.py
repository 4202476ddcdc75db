"""Keep notebook execution from waiting forever on a reply that has already arrived.

The course runs notebooks through ``nbclient`` in four places: the grader
(:mod:`exercises_lib.grade`), ``python -m exercises_lib.generate --execute``,
the determinism test and the book build (myst-nb). ``nbclient`` waits for the
kernel's messages with ``jupyter_client``'s asyncio channels, whose sockets
wake the event loop through ZeroMQ's edge-triggered file descriptor. When that
wake-up is missed, the wait lasts until the cell's timeout (15 minutes here)
although the message is already in the socket.

We saw this in CI: a notebook whose cells all finished in seconds hung in
``NotebookClient._async_poll_for_reply``. The kernel was idle and the
``execute_reply`` sat unread in the client's shell socket
(``socket.getsockopt(zmq.EVENTS) & zmq.POLLIN`` was set) for ten minutes.
The same class of bug is discussed upstream (zeromq/pyzmq#2173,
ipython/ipykernel#1529).

:func:`install` makes every asyncio channel wait in steps of at most
:data:`STEP` seconds. When a step times out, pyzmq re-checks the socket with a
real ``zmq_poll``, so a message whose wake-up was lost is picked up within a
step. The overall timeout keeps its meaning. The course calls
:func:`install` before it starts a kernel; the book's Sphinx extension
(``book/_ext/coursebook.py``) calls it too.
"""

from __future__ import annotations

import functools
import time
from queue import Empty
from typing import Any, Awaitable, Callable

__all__ = ["STEP", "install", "chunked"]

#: Longest single wait, in seconds (the most a lost wake-up can cost).
STEP = 1.0

GetMsg = Callable[..., Awaitable[dict[str, Any]]]


def chunked(get_msg: GetMsg, step: float = STEP) -> GetMsg:
    """Wrap an async ``get_msg(self, timeout=None)`` so it waits ``step`` seconds at a time.

    Same contract as the original: returns the next message, or raises
    ``queue.Empty`` once ``timeout`` seconds have passed without one
    (``timeout=None``: wait as long as it takes).
    """
    if step <= 0:
        raise ValueError(f"step must be positive, not {step}")

    @functools.wraps(get_msg)
    async def get_msg_in_steps(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = step if deadline is None else min(step, deadline - time.monotonic())
            if left <= 0:
                # Deadline reached: one last non-blocking look, which raises Empty if nothing is there.
                return await get_msg(self, timeout=0)
            try:
                return await get_msg(self, timeout=left)
            except Empty:
                continue

    get_msg_in_steps._course_chunked = True  # type: ignore[attr-defined]
    return get_msg_in_steps


def install(step: float = STEP) -> bool:
    """Patch ``jupyter_client``'s asyncio channels (once per process).

    Returns True if this call installed the patch, False if it was already in
    place or ``jupyter_client`` is missing.
    """
    try:
        from jupyter_client.channels import AsyncZMQSocketChannel
    except ImportError:  # nothing executes notebooks in this process
        return False
    if getattr(AsyncZMQSocketChannel.get_msg, "_course_chunked", False):
        return False
    AsyncZMQSocketChannel.get_msg = chunked(AsyncZMQSocketChannel.get_msg, step)
    return True
