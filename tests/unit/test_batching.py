"""The scorer's micro-batcher: admission (a bounded queue), the measured pace it predicts a
prompt's wait from, and shutdown, with a batch function held on cue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tierroute.router.scoring.batching import MicroBatcher


class Held:
    """A batch function that returns each text's length once released, and says when a batch
    has started."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[int]:
        self.batches.append(texts)
        self.started.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the batch")
        return [len(t) for t in texts]


async def test_each_caller_gets_its_own_result_and_the_pace_is_measured() -> None:
    held = Held()
    held.release.set()
    batcher: MicroBatcher[int] = MicroBatcher(held, max_size=4)
    batcher.start()
    try:
        assert batcher.batch_seconds is None and batcher.predicted_wait() == 0.0
        got = await asyncio.gather(*(batcher.submit("x" * n) for n in range(1, 7)))
        assert got == [1, 2, 3, 4, 5, 6]
        assert batcher.items == 6 and all(len(b) <= 4 for b in held.batches)
        assert batcher.batch_seconds is not None and batcher.batch_seconds > 0
        # idle: a prompt queued now is the probe, whatever the last pace was
        assert batcher.predicted_wait() == 0.0
    finally:
        await batcher.close()


async def test_a_full_queue_is_refused_and_the_wait_is_predicted_from_the_pace() -> None:
    held = Held()
    held.release.set()
    batcher: MicroBatcher[int] = MicroBatcher(held, max_size=2, max_queue=3)
    batcher.start()
    try:
        await batcher.submit("measure the pace once")
        pace = batcher.batch_seconds
        assert pace is not None
        held.release.clear()
        held.started.clear()
        running = asyncio.ensure_future(batcher.submit("holds the worker"))
        await asyncio.to_thread(held.started.wait, 30)
        # one batch running, the only worker busy: what is left of it (at the measured pace,
        # less the time it has run), then the new prompt's own batch
        assert pace <= batcher.predicted_wait() <= 2 * pace
        queued = [asyncio.ensure_future(batcher.submit(f"q{i}")) for i in range(3)]
        await asyncio.sleep(0)  # let them enqueue
        assert batcher.full
        # 3 queued, 2 per batch: the new prompt's batch is the second after the running one
        assert 2 * pace <= batcher.predicted_wait() <= 3 * pace
        held.release.set()
        assert await running == len("holds the worker")
        assert await asyncio.gather(*queued) == [2, 2, 2]
        assert not batcher.full
    finally:
        held.release.set()
        await batcher.close()


async def test_close_fails_every_waiting_caller() -> None:
    held = Held()
    batcher: MicroBatcher[int] = MicroBatcher(held, max_size=1)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit("running"))
    await asyncio.to_thread(held.started.wait, 30)
    queued = asyncio.ensure_future(batcher.submit("queued"))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0)
    held.release.set()  # the running batch's thread ends; its callers were already failed
    await closing
    for call in (running, queued):
        with pytest.raises(RuntimeError, match="shutting down"):
            await call
