"""The guard against lost ZeroMQ wake-ups (exercises_lib.kernel_wait).

A channel whose wake-up is lost looks, from the guard's side, like a wait
that times out although a message is there: the next short wait finds it.
The last tests execute real notebooks and fail if nbclient stops waiting
through the guard's channel (then the guard would silently do nothing).
"""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import nbformat
import pytest
import zmq
import zmq.asyncio

from exercises_lib import kernel_wait


class _Channel:
    """A stand-in for jupyter_client's channel: its first ``misses`` waits time out
    (each after ``min(timeout, 0.01)`` s), then the message is there."""

    def __init__(self, misses: int | None):
        self.misses = misses
        self.timeouts: list[float | None] = []
        self.kwargs: list[dict] = []

    async def get_msg(self, timeout=None, **kwargs):
        self.timeouts.append(timeout)
        self.kwargs.append(kwargs)
        if self.misses is None or self.misses > 0:
            if self.misses is not None:
                self.misses -= 1
            await asyncio.sleep(min(timeout if timeout is not None else 0.01, 0.01))
            raise Empty
        return {"msg_type": "execute_reply"}


def _get(channel, step, timeout, **kwargs):
    return asyncio.run(kernel_wait.wait_in_steps(channel.get_msg, timeout, step, **kwargs))


def test_a_missed_wait_is_retried_until_the_message_comes():
    ch = _Channel(misses=3)
    assert _get(ch, step=0.5, timeout=None) == {"msg_type": "execute_reply"}
    assert ch.timeouts == [0.5] * 4  # never one unbounded wait


def test_the_overall_timeout_still_raises_empty():
    ch = _Channel(misses=None)
    start = time.monotonic()
    with pytest.raises(Empty):
        _get(ch, step=0.05, timeout=0.2)
    assert time.monotonic() - start < 2.0
    assert all(t is not None and t <= 0.05 for t in ch.timeouts)
    assert ch.timeouts[-1] == 0  # one last non-blocking look at the deadline


def test_a_keyword_of_a_later_jupyter_client_is_passed_through():
    ch = _Channel(misses=1)
    _get(ch, step=0.5, timeout=None, flags="a-new-keyword")
    assert ch.kwargs == [{"flags": "a-new-keyword"}] * 2


def test_bad_step_is_refused():
    with pytest.raises(ValueError, match="step must be positive"):
        _get(_Channel(misses=0), step=0, timeout=None)


def test_the_client_uses_the_chunked_channel_through_its_channel_class_attributes():
    client = kernel_wait.ChunkedAsyncKernelManager().client()
    for kind in ("shell", "iopub", "stdin", "control"):
        assert getattr(client, f"{kind}_channel_class") is kernel_wait.ChunkedAsyncZMQSocketChannel
    # jupyter_client's own channel class is left as it is.
    from jupyter_client.channels import AsyncZMQSocketChannel

    assert AsyncZMQSocketChannel.get_msg.__qualname__ == "AsyncZMQSocketChannel.get_msg"


def test_install_sets_the_default_client_of_jupyter_clients_manager():
    from jupyter_client import AsyncKernelManager

    kernel_wait.install()
    assert AsyncKernelManager().client_factory is kernel_wait.ChunkedAsyncKernelClient
    assert kernel_wait.install() is False


def test_chunked_channel_reads_real_sockets():
    """On a real ZeroMQ pair: a message already queued is returned, and an empty
    socket raises Empty after the timeout."""
    from jupyter_client.session import Session

    async def main():
        ctx = zmq.asyncio.Context()
        session = Session()
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        try:
            channel = kernel_wait.ChunkedAsyncZMQSocketChannel(b, session)
            session.send(a, "execute_reply", {"status": "ok"})
            msg = await channel.get_msg(timeout=5)
            assert msg["msg_type"] == "execute_reply"
            start = time.monotonic()
            with pytest.raises(Empty):
                await channel.get_msg(timeout=0.3)
            assert 0.25 <= time.monotonic() - start < 3
        finally:
            a.close(linger=0)
            b.close(linger=0)
            ctx.term()

    asyncio.run(main())


def _tiny_notebook():
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])


def test_executing_a_notebook_waits_through_the_chunked_channel():
    """Fails if nbclient stops calling the channel's get_msg: the guard would then do nothing."""
    nb = _tiny_notebook()
    before = kernel_wait.ChunkedAsyncZMQSocketChannel.waits
    kernel_wait.notebook_client(nb, timeout=120, kernel_name="python3").execute()
    assert nb.cells[0].outputs[0]["text"] == "42\n"
    assert kernel_wait.ChunkedAsyncZMQSocketChannel.waits > before


def test_a_plain_notebook_client_waits_through_it_after_install():
    """What the book build does: install(), then nbclient's own NotebookClient."""
    from nbclient import NotebookClient

    kernel_wait.install()
    nb = _tiny_notebook()
    before = kernel_wait.ChunkedAsyncZMQSocketChannel.waits
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert nb.cells[0].outputs[0]["text"] == "42\n"
    assert kernel_wait.ChunkedAsyncZMQSocketChannel.waits > before
