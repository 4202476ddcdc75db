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

The guard is a channel class, :class:`ChunkedAsyncZMQSocketChannel`, that
waits in steps of at most :data:`STEP` seconds. When a step times out, pyzmq
re-checks the socket with a real ``zmq_poll``, so a message whose wake-up was
lost is picked up within a step; the overall timeout keeps its meaning. It
reaches ``nbclient`` through ``jupyter_client``'s own extension points, not by
replacing a method of ``jupyter_client``:

* :class:`ChunkedAsyncKernelClient` sets the channel classes through the
  client's ``*_channel_class`` attributes;
* :class:`ChunkedAsyncKernelManager` creates that client
  (``client_class`` / ``client_factory``); :func:`notebook_client` passes it to
  ``nbclient.NotebookClient`` as ``kernel_manager_class``. The grader and the
  tests use it.
* :func:`install` is for code that creates its ``NotebookClient`` itself
  (``python -m exercises_lib.generate --execute``, the book build's myst-nb):
  it makes ``jupyter_client``'s ``AsyncKernelManager`` create
  :class:`ChunkedAsyncKernelClient` by default, through the same two
  configurable traits.

``tests/test_kernel_wait.py`` executes a notebook and fails if the channel's
``get_msg`` was not called (if ``nbclient`` stops waiting through it, the guard
would silently do nothing). The tested ``jupyter_client`` range is pinned in
``requirements.txt``; a keyword a later version adds to ``get_msg`` is passed
through unchanged.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any, Awaitable, Callable

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

__all__ = [
    "STEP",
    "wait_in_steps",
    "ChunkedAsyncZMQSocketChannel",
    "ChunkedAsyncKernelClient",
    "ChunkedAsyncKernelManager",
    "notebook_client",
    "install",
]

#: Longest single wait, in seconds (the most a lost wake-up can cost).
STEP = 1.0

_CLIENT = "exercises_lib.kernel_wait.ChunkedAsyncKernelClient"


async def wait_in_steps(
    get_msg: Callable[..., Awaitable[dict[str, Any]]],
    timeout: float | None = None,
    step: float = STEP,
    **kwargs: Any,
) -> dict[str, Any]:
    """Call ``get_msg(timeout=t, **kwargs)`` with ``t <= step`` until a message comes.

    Same contract as ``get_msg``: returns the next message, or raises
    ``queue.Empty`` once ``timeout`` seconds have passed without one
    (``timeout=None``: wait as long as it takes).
    """
    if step <= 0:
        raise ValueError(f"step must be positive, not {step}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = step if deadline is None else min(step, deadline - time.monotonic())
        if left <= 0:
            # Deadline reached: one last non-blocking look, which raises Empty if nothing is there.
            return await get_msg(timeout=0, **kwargs)
        try:
            return await get_msg(timeout=left, **kwargs)
        except Empty:
            continue


class ChunkedAsyncZMQSocketChannel(AsyncZMQSocketChannel):
    """``jupyter_client``'s asyncio channel, waiting at most :data:`STEP` seconds at a time."""

    #: Longest single wait of this class's channels, in seconds.
    step: float = STEP
    #: How many waits went through this class in this process (read by the tests).
    waits: int = 0

    async def get_msg(self, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        ChunkedAsyncZMQSocketChannel.waits += 1
        return await wait_in_steps(super().get_msg, timeout, self.step, **kwargs)


class ChunkedAsyncKernelClient(AsyncKernelClient):
    """An asyncio kernel client whose message channels are :class:`ChunkedAsyncZMQSocketChannel`."""

    shell_channel_class = Type(ChunkedAsyncZMQSocketChannel)  # type: ignore[assignment]
    iopub_channel_class = Type(ChunkedAsyncZMQSocketChannel)  # type: ignore[assignment]
    stdin_channel_class = Type(ChunkedAsyncZMQSocketChannel)  # type: ignore[assignment]
    control_channel_class = Type(ChunkedAsyncZMQSocketChannel)  # type: ignore[assignment]


class ChunkedAsyncKernelManager(AsyncKernelManager):
    """An asyncio kernel manager whose clients are :class:`ChunkedAsyncKernelClient`."""

    client_class = DottedObjectName(_CLIENT, config=True)
    client_factory = Type(ChunkedAsyncKernelClient, klass=AsyncKernelClient, config=True)


def notebook_client(nb, **kwargs: Any):
    """``nbclient.NotebookClient(nb, **kwargs)`` using :class:`ChunkedAsyncKernelManager`."""
    from nbclient import NotebookClient

    kwargs.setdefault("kernel_manager_class", ChunkedAsyncKernelManager)
    return NotebookClient(nb, **kwargs)


def install() -> bool:
    """Make ``jupyter_client``'s ``AsyncKernelManager`` create :class:`ChunkedAsyncKernelClient`.

    For code that builds its own ``NotebookClient`` (the book build). It sets
    the default of the manager's ``client_class`` and ``client_factory``
    traits; a ``client_class`` given in a Jupyter config still wins. Returns
    True if this call changed the defaults, False if they were already set.
    """
    traits = AsyncKernelManager.class_traits()
    if traits["client_factory"].default_value is ChunkedAsyncKernelClient:
        return False
    traits["client_class"].default_value = _CLIENT
    traits["client_factory"].default_value = ChunkedAsyncKernelClient
    return True
