"""The tier's `waiting` messages (services/tier/service.py with_waiting): sent while a request
waits for its first token and the engine makes progress, never after the first chunk, never
for a hung engine; and the request's stream is closed however it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tierroute.tier import service
from tierroute.tier.v1 import tier_service_pb2 as pb


class Engine:
    def __init__(self, progressing: bool) -> None:
        self._progressing = progressing

    def progressing(self) -> bool:
        return self._progressing

    def active_requests(self) -> int:
        return 3


class Scripted:
    """A request's responses: a chunk and complete once `go` is set; counts its closing."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.closed = False

    async def responses(self) -> AsyncIterator[pb.GenerateResponse]:
        try:
            await self.go.wait()
            yield pb.GenerateResponse(chunk=pb.GenerateChunk(text="hi", token_count=1))
            await self.go.wait()
            yield pb.GenerateResponse(complete=pb.GenerateComplete(completion_tokens=1))
        finally:
            self.closed = True


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "WAITING_SECONDS", 0.001)


async def test_a_queued_request_is_told_it_waits_until_its_first_chunk() -> None:
    script = Scripted()
    out = service.with_waiting(script.responses(), Engine(True), 0.0)  # type: ignore[arg-type]
    kinds = []
    async for response in out:
        kinds.append(response.WhichOneof("event"))
        if kinds.count("waiting") == 3:
            script.go.set()  # the engine starts it
    assert kinds[:3] == ["waiting"] * 3
    assert kinds[3:] == ["chunk", "complete"]
    assert script.closed


async def test_a_hung_engine_sends_no_waiting_messages() -> None:
    script = Scripted()
    out = service.with_waiting(script.responses(), Engine(False), 0.0)  # type: ignore[arg-type]
    reading = asyncio.ensure_future(anext(out))
    for _ in range(20):
        await asyncio.sleep(0.002)  # many waiting periods pass; nothing may come
    assert not reading.done()
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await out.aclose()
    assert script.closed, "the request's stream was closed (the engine aborts it)"
