"""The OpenAI API's shapes on the HTTP front: a chat completion request read into a RouteRequest
(every field checked, with an error that names it), the completion and its chunks built from
the Route's events, and errors in OpenAI's error shape."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterable
from typing import Any

from google.protobuf.json_format import MessageToDict
from starlette.responses import JSONResponse

from tierroute.common.v1 import common_pb2 as common_pb
from tierroute.core.errors import (
    ServiceError,
)
from tierroute.router.route.state import Escalated, Finished, RouteEvent, Token
from tierroute.router.v1 import router_service_pb2 as pb

RETRY_AFTER_SECONDS = 1
AUTO = "auto"


_FINISH = {
    common_pb.FINISH_REASON_STOP: "stop",
    common_pb.FINISH_REASON_LENGTH: "length",
    common_pb.FINISH_REASON_REPETITION: "stop",
    common_pb.FINISH_REASON_ABORT: "stop",
}


class HttpError(Exception):
    """An error to answer with OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


def from_service_error(error: ServiceError) -> HttpError:
    status, kind = error.http
    headers = {}
    if status == 429:
        wait = getattr(error, "retry_after_s", None)
        headers["retry-after"] = str(math.ceil(wait) if wait else RETRY_AFTER_SECONDS)
    return HttpError(status, str(error), kind, code=kind if status >= 429 else None,
                     headers=headers)  # fmt: skip


def json_depth(doc: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON document (a scalar: 0), walked
    without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def sse(doc: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


class Completion:
    """One answer as OpenAI's chat.completion (or its chunks)."""

    def __init__(self, decision: pb.RoutingDecision) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.decision = decision
        self.tier = decision.tier
        self.text: list[str] = []
        self.escalations: list[pb.Escalation] = []
        self.summary: pb.RouteSummary | None = None

    def add(self, event: RouteEvent) -> None:
        if isinstance(event, Token):
            self.text.append(event.text)
            self.tier = event.tier
        elif isinstance(event, Escalated):
            self.escalations.append(event.escalation)
            self.tier = event.escalation.to_tier
        elif isinstance(event, Finished):
            self.summary = event.summary
            self.tier = event.summary.tier or self.tier

    def headers(self) -> dict[str, str]:
        d = self.decision
        return {
            "x-tierroute-tier": d.tier,
            "x-tierroute-score": f"{d.complexity_score:.4f}",
            "x-tierroute-reasons": ",".join(
                [pb.ReasonCode.Name(r).removeprefix("REASON_CODE_").lower() for r in d.reason_codes]
                + list(d.reasons)
            ),
        }

    def finish_reason(self) -> str:
        reason = self.summary.finish_reason if self.summary else common_pb.FINISH_REASON_UNSPECIFIED
        return _FINISH.get(reason, "stop")

    def usage(self) -> dict[str, int]:
        u = self.summary.usage if self.summary else common_pb.Usage()
        return {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }

    def extension(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "decision": MessageToDict(self.decision, preserving_proto_field_name=True)
        }
        if self.escalations:
            doc["escalations"] = [
                MessageToDict(e, preserving_proto_field_name=True) for e in self.escalations
            ]
        if self.summary is not None:
            doc["summary"] = MessageToDict(self.summary, preserving_proto_field_name=True)
        return doc

    def whole(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.tier,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.text)},
                    "finish_reason": self.finish_reason(),
                    "logprobs": None,
                }
            ],
            "usage": self.usage(),
            "tierroute": self.extension(),
        }

    def chunk_head(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.tier,
        }

    def chunk(
        self, delta: dict[str, Any], finish: str | None = None, extension: bool = False
    ) -> dict[str, Any]:
        doc = {
            **self.chunk_head(),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if extension:
            doc["tierroute"] = self.extension()
        return doc


_SLO_FIELDS = ("max_ttft_ms", "max_cost_per_1k")


def parse(body: Any, tiers: list[str]) -> tuple[pb.RouteRequest, bool, bool]:
    """A chat.completions body as a RouteRequest, and whether to stream and to send usage.
    HttpError, naming the field, for anything the router cannot serve."""
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise HttpError(400, f"`model` is required: {AUTO!r} or a tier ({', '.join(tiers)})",
                        param="model")  # fmt: skip
    if model != AUTO and model not in tiers:
        raise HttpError(
            404,
            f"the model {model!r} does not exist: use {AUTO!r} (the router decides) or a tier: "
            f"{', '.join(tiers)}",
            param="model",
            code="model_not_found",
        )
    # A tier named as the model answers: that tier only, never escalated (the decision's
    # reasons say so: forced_tier, escalation_disabled).
    pinned = model != AUTO
    request = pb.RouteRequest(force_tier=model if pinned else "", disable_escalation=pinned)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "`messages` must be a non-empty array of {role, content}",
                        param="messages")  # fmt: skip
    for i, m in enumerate(messages):
        request.messages.append(_message(m, i))
    n = body.get("n", 1)
    if n not in (1, None):
        raise HttpError(400, f"`n` is {n!r}; the router answers with one choice (n: 1)", param="n")
    s = request.sampling
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not _is_int(max_tokens) or not 1 <= max_tokens < 2**32:
            raise HttpError(400, f"`max_tokens` is {max_tokens!r}; use a positive integer",
                            param="max_tokens")  # fmt: skip
        s.max_tokens = max_tokens
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not _is_number(value):
                raise HttpError(400, f"`{name}` is {value!r}; use a number", param=name)
            setattr(s, name, float(value))
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
            raise HttpError(400, "`stop` must be a string or an array of non-empty strings",
                            param="stop")  # fmt: skip
        s.stop.extend(stops)
    seed = body.get("seed")
    if seed is not None:
        if not _is_int(seed) or not -(2**63) <= seed < 2**63:
            raise HttpError(400, f"`seed` is {seed!r}; use an integer", param="seed")
        s.seed = seed
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise HttpError(400, f"`stream` is {stream!r}; use true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise HttpError(400, "`stream_options` must be an object", param="stream_options")
    include_usage = bool(options.get("include_usage", False))
    _extension(body.get("tierroute"), request)
    return request, bool(stream), include_usage


def _extension(ext: Any, request: pb.RouteRequest) -> None:
    """The `tierroute` extension field: an SLO, no escalation, no cache."""
    if ext is None:
        return
    if not isinstance(ext, dict):
        raise HttpError(400, "`tierroute` must be an object", param="tierroute")
    known = {*_SLO_FIELDS, "disable_escalation", "bypass_cache"}
    unknown = sorted(set(ext) - known)
    if unknown:
        raise HttpError(
            400, f"`tierroute` has unknown fields {unknown}; known: {sorted(known)}",
            param="tierroute",
        )  # fmt: skip
    for name in _SLO_FIELDS:
        if ext.get(name) is not None:
            if not _is_number(ext[name]):
                raise HttpError(400, f"`tierroute.{name}` is {ext[name]!r}; use a number",
                                param=f"tierroute.{name}")  # fmt: skip
            setattr(request.slo, name, float(ext[name]))
    for name in ("disable_escalation", "bypass_cache"):
        if name in ext:
            if not isinstance(ext[name], bool):
                raise HttpError(400, f"`tierroute.{name}` must be true or false",
                                param=f"tierroute.{name}")  # fmt: skip
            if name == "disable_escalation" and request.force_tier and not ext[name]:
                raise HttpError(
                    400, f"`model` {request.force_tier!r} pins that tier, which answers without "
                    "escalation; use model 'auto' to let the router escalate",
                    param="tierroute.disable_escalation",
                )  # fmt: skip
            setattr(request, name, ext[name])


def _message(m: Any, i: int) -> common_pb.ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise HttpError(400, f"`{where}` must be an object with role and content", param=where)
    role, content = m.get("role"), m.get("content")
    if role == "developer":  # OpenAI's newer name for the system turn
        role = "system"
    if not isinstance(role, str):
        raise HttpError(400, f"`{where}.role` must be a string", param=f"{where}.role")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise HttpError(
                    400, f"`{where}.content[{j}]` is not a text part; the router takes text only",
                    param=f"{where}.content",
                )  # fmt: skip
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise HttpError(400, f"`{where}.content` must be a string or text parts",
                        param=f"{where}.content")  # fmt: skip
    return common_pb.ChatMessage(role=role, content=content)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
