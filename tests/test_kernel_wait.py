"""The guard against lost ZeroMQ wake-ups (exercises_lib.kernel_wait).

A channel whose wake-up is lost looks, from the wrapper's side, like a wait
that times out although a message is there: the next short wait finds it.
"""

from __future__ import annotations

import asyncio
import time
from queue import Empty

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

    async def get_msg(self, timeout=None):
        self.timeouts.append(timeout)
        if self.misses is None or self.misses > 0:
            if self.misses is not None:
                self.misses -= 1
            await asyncio.sleep(min(timeout if timeout is not None else 0.01, 0.01))
            raise Empty
        return {"msg_type": "execute_reply"}


def _get(channel, step, timeout):
    wrapped = kernel_wait.chunked(type(channel).get_msg, step=step)
    return asyncio.run(wrapped(channel, timeout=timeout))


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


def test_bad_step_is_refused():
    with pytest.raises(ValueError, match="step must be positive"):
        kernel_wait.chunked(_Channel.get_msg, step=0)


def test_install_patches_jupyter_client_once():
    from jupyter_client.channels import AsyncZMQSocketChannel

    kernel_wait.install()
    patched = AsyncZMQSocketChannel.get_msg
    assert getattr(patched, "_course_chunked", False)
    assert kernel_wait.install() is False
    assert AsyncZMQSocketChannel.get_msg is patched


def test_patched_channel_reads_real_sockets():
    """On a real ZeroMQ pair: a message already queued is returned, and an empty
    socket raises Empty after the timeout."""
    from jupyter_client.channels import AsyncZMQSocketChannel
    from jupyter_client.session import Session

    kernel_wait.install()

    async def main():
        ctx = zmq.asyncio.Context()
        session = Session()
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        try:
            channel = AsyncZMQSocketChannel(b, session)
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
