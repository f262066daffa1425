"""Micro-batching: concurrent scoring requests share one trip to a scoring thread.

Requests queue up; a worker takes everything queued (up to `max_size`) and scores it as one
batch on its own thread (the embedder runs the batch's prompts side by side, each alone, and
the scorer scores them in one matrix product), so the event loop keeps accepting requests
meanwhile. Requests that
arrive during a run form the next batch, so batches grow with load and a lone request never
waits. With `max_wait_ms` > 0 the worker also waits up to that long for a batch to fill.
`workers` batches may run at once (router.scorer_threads).

The batcher measures how long a batch takes (a moving average), so the decider can tell
before queueing a prompt whether its answer would come within the budget
(`predicted_wait`), and refuses prompts beyond `max_queue` (`full`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Weight of the newest batch in the moving average of a batch's duration.
_SMOOTHING = 0.2


@dataclass
class _Item(Generic[T]):
    text: str
    future: asyncio.Future[T]


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        run: Callable[[list[str]], list[T]],
        max_size: int = 32,
        max_wait_ms: float = 0.0,
        workers: int = 1,
        max_queue: int = 1024,
    ) -> None:
        self._run_batch = run
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000.0
        self._max_queue = max_queue
        self._queue: asyncio.Queue[_Item[T]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="score")
        self._workers: list[asyncio.Task[None]] = []
        self._count = workers
        self._current: dict[int, list[_Item[T]]] = {}  # the batches being run, for close()
        self._started: dict[int, float] = {}  # when each worker's batch started
        self.batches = 0
        self.items = 0
        self.batch_seconds: float | None = None  # moving average of a batch's duration

    def start(self) -> None:
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._run(i), name=f"batcher-{i}") for i in range(self._count)
            ]

    async def close(self) -> None:
        """Stop the workers; every caller still waiting gets an error, none is left hanging."""
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        waiting = [item for batch in self._current.values() for item in batch]
        waiting += [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the scorer is shutting down"))
        self._current = {}
        await asyncio.to_thread(self._executor.shutdown, True)

    @property
    def full(self) -> bool:
        """`max_queue` prompts are waiting: one more would only wait longer."""
        return self._queue.qsize() >= self._max_queue

    def predicted_wait(self) -> float:
        """Seconds a prompt queued now would take to be scored, at the measured duration of a
        batch: the rest of the running batch that ends first when every worker is busy, then
        the batches ahead of it and its own, shared among the workers. 0 until a batch has
        been measured, and while no batch runs or waits: that prompt is the probe that
        measures the pace again."""
        pace = self.batch_seconds
        running = [self._started[w] for w, batch in self._current.items() if batch]
        if pace is None or (not running and self._queue.empty()):
            return 0.0
        now = asyncio.get_running_loop().time()
        first_free = 0.0
        if len(running) >= self._count:
            first_free = min(max(0.0, pace - (now - started)) for started in running)
        batches = -(-(self._queue.qsize() + 1) // self._max_size)
        return first_free + batches * pace / self._count

    async def submit(self, text: str) -> T:
        """What `run` made of `text`, in a batch with whatever else is waiting."""
        if not self._workers:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(text, future))
        return await future

    async def _take_batch(self, worker: int) -> list[_Item[T]]:
        # The batch is this worker's from its first item on: taken from the queue, its prompts
        # count as running for predicted_wait and close().
        batch = self._current[worker] = [await self._queue.get()]
        self._started[worker] = asyncio.get_running_loop().time()
        # Let calls that have arrived be accepted and enqueue their prompts before the batch
        # is cut: the worker is woken by the first put, and grpc.aio accepts calls one loop
        # iteration at a time. Stop yielding as soon as an iteration adds nothing.
        for _ in range(self._max_size):
            size = self._queue.qsize()
            await asyncio.sleep(0)
            if self._queue.qsize() == size:
                break
        deadline = asyncio.get_running_loop().time() + self._max_wait
        while len(batch) < self._max_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self, worker: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._current[worker] = []
            batch = await self._take_batch(worker)
            live = [item for item in batch if not item.future.done()]  # skip cancelled callers
            if not live:
                continue
            texts = [item.text for item in live]
            started = self._started[worker] = loop.time()
            try:
                # Off the event loop, so that calls keep being accepted (and so form the next
                # batch) while this one runs; the hand-off costs about 0.2 ms here. Running
                # inline instead blocks grpc.aio from accepting calls: no batch ever forms.
                results = await loop.run_in_executor(self._executor, self._run_batch, texts)
            except Exception as exc:
                logger.exception("scoring a batch of %d failed", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            took = loop.time() - started
            self.batch_seconds = (
                took
                if self.batch_seconds is None
                else (1 - _SMOOTHING) * self.batch_seconds + _SMOOTHING * took
            )
            self.batches += 1
            self.items += len(live)
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
