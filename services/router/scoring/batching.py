"""Micro-batching: concurrent embedding requests share one ONNX run.

Requests queue up; one worker takes everything queued (up to `max_size`) and embeds it in one
run on a dedicated thread, so the event loop keeps accepting requests meanwhile. Requests that
arrive during a run form the next batch, so batches grow with load and a lone request never
waits. With `max_wait_ms` > 0 the worker also waits up to that long for a batch to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], tuple[np.ndarray, list[bool]]]


@dataclass
class _Item:
    text: str
    future: asyncio.Future[tuple[np.ndarray, bool]]


class MicroBatcher:
    def __init__(self, embed: EmbedFn, max_size: int = 32, max_wait_ms: float = 0.0) -> None:
        self._embed = embed
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._worker: asyncio.Task[None] | None = None
        self._current: list[_Item] = []  # the batch being embedded, for close()
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Stop the worker; every caller still waiting gets an error, none is left hanging."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        waiting = self._current + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the embedder is shutting down"))
        self._current = []
        await asyncio.to_thread(self._executor.shutdown, True)

    async def embed(self, text: str) -> tuple[np.ndarray, bool]:
        """The embedding of `text` and whether it was truncated for embedding."""
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[tuple[np.ndarray, bool]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(text, future))
        return await future

    async def _take_batch(self) -> list[_Item]:
        batch = [await self._queue.get()]
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._current = await self._take_batch()
            live = [item for item in batch if not item.future.done()]  # skip cancelled callers
            if not live:
                continue
            texts = [item.text for item in live]
            try:
                # Off the event loop, so that calls keep being accepted (and so form the next
                # batch) while this one runs; the hand-off costs about 0.2 ms here. Running
                # inline instead blocks grpc.aio from accepting calls: no batch ever forms.
                vectors, truncated = await loop.run_in_executor(self._executor, self._embed, texts)
            except Exception as exc:
                logger.exception("embedding a batch of %d failed", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(live)
            for row, item in enumerate(live):
                if not item.future.done():
                    item.future.set_result((vectors[row], truncated[row]))
