from tierroute.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReasonCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_CODE_UNSPECIFIED: _ClassVar[ReasonCode]
    REASON_CODE_SCORE_BELOW_THRESHOLD: _ClassVar[ReasonCode]
    REASON_CODE_SCORE_ABOVE_THRESHOLD: _ClassVar[ReasonCode]
    REASON_CODE_CACHE_HIT: _ClassVar[ReasonCode]
    REASON_CODE_ROUTER_FALLBACK: _ClassVar[ReasonCode]
    REASON_CODE_TIER_UNAVAILABLE: _ClassVar[ReasonCode]
    REASON_CODE_CIRCUIT_OPEN: _ClassVar[ReasonCode]
    REASON_CODE_PROMPT_TRUNCATED: _ClassVar[ReasonCode]
    REASON_CODE_FORCED_TIER: _ClassVar[ReasonCode]
    REASON_CODE_VALIDATOR_UNAVAILABLE: _ClassVar[ReasonCode]
    REASON_CODE_SCORE_DEGRADED: _ClassVar[ReasonCode]

class EscalationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESCALATION_REASON_UNSPECIFIED: _ClassVar[EscalationReason]
    ESCALATION_REASON_LOW_CONFIDENCE: _ClassVar[EscalationReason]
    ESCALATION_REASON_PARSE_FAILURE: _ClassVar[EscalationReason]
    ESCALATION_REASON_SCHEMA_VIOLATION: _ClassVar[EscalationReason]
    ESCALATION_REASON_EMPTY_ANSWER: _ClassVar[EscalationReason]
    ESCALATION_REASON_TIER_FAILURE: _ClassVar[EscalationReason]
    ESCALATION_REASON_VALIDATOR_UNAVAILABLE: _ClassVar[EscalationReason]
    ESCALATION_REASON_TIER_OVERLOADED: _ClassVar[EscalationReason]
    ESCALATION_REASON_CONTEXT_TOO_LONG: _ClassVar[EscalationReason]

class ValidationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALIDATION_STATUS_UNSPECIFIED: _ClassVar[ValidationStatus]
    VALIDATION_STATUS_NOT_VALIDATED: _ClassVar[ValidationStatus]
    VALIDATION_STATUS_PASSED: _ClassVar[ValidationStatus]
    VALIDATION_STATUS_FAILED: _ClassVar[ValidationStatus]
    VALIDATION_STATUS_VALIDATOR_UNAVAILABLE: _ClassVar[ValidationStatus]
REASON_CODE_UNSPECIFIED: ReasonCode
REASON_CODE_SCORE_BELOW_THRESHOLD: ReasonCode
REASON_CODE_SCORE_ABOVE_THRESHOLD: ReasonCode
REASON_CODE_CACHE_HIT: ReasonCode
REASON_CODE_ROUTER_FALLBACK: ReasonCode
REASON_CODE_TIER_UNAVAILABLE: ReasonCode
REASON_CODE_CIRCUIT_OPEN: ReasonCode
REASON_CODE_PROMPT_TRUNCATED: ReasonCode
REASON_CODE_FORCED_TIER: ReasonCode
REASON_CODE_VALIDATOR_UNAVAILABLE: ReasonCode
REASON_CODE_SCORE_DEGRADED: ReasonCode
ESCALATION_REASON_UNSPECIFIED: EscalationReason
ESCALATION_REASON_LOW_CONFIDENCE: EscalationReason
ESCALATION_REASON_PARSE_FAILURE: EscalationReason
ESCALATION_REASON_SCHEMA_VIOLATION: EscalationReason
ESCALATION_REASON_EMPTY_ANSWER: EscalationReason
ESCALATION_REASON_TIER_FAILURE: EscalationReason
ESCALATION_REASON_VALIDATOR_UNAVAILABLE: EscalationReason
ESCALATION_REASON_TIER_OVERLOADED: EscalationReason
ESCALATION_REASON_CONTEXT_TOO_LONG: EscalationReason
VALIDATION_STATUS_UNSPECIFIED: ValidationStatus
VALIDATION_STATUS_NOT_VALIDATED: ValidationStatus
VALIDATION_STATUS_PASSED: ValidationStatus
VALIDATION_STATUS_FAILED: ValidationStatus
VALIDATION_STATUS_VALIDATOR_UNAVAILABLE: ValidationStatus

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "prompt", "messages", "bypass_cache", "slo", "max_tokens")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    bypass_cache: bool
    slo: Slo
    max_tokens: int
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., bypass_cache: _Optional[bool] = ..., slo: _Optional[_Union[Slo, _Mapping]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class Slo(_message.Message):
    __slots__ = ("max_ttft_ms", "max_cost_per_1k")
    MAX_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_PER_1K_FIELD_NUMBER: _ClassVar[int]
    max_ttft_ms: float
    max_cost_per_1k: float
    def __init__(self, max_ttft_ms: _Optional[float] = ..., max_cost_per_1k: _Optional[float] = ...) -> None: ...

class RoutingDecision(_message.Message):
    __slots__ = ("complexity_score", "tier", "confidence", "category", "reason_codes", "router_latency_ms", "cache_hit", "embedder_version", "scorer_version", "tier_max_score", "reasons", "predicted_quality")
    class PredictedQualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    COMPLEXITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REASON_CODES_FIELD_NUMBER: _ClassVar[int]
    ROUTER_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIER_MAX_SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    complexity_score: float
    tier: str
    confidence: float
    category: str
    reason_codes: _containers.RepeatedScalarFieldContainer[ReasonCode]
    router_latency_ms: float
    cache_hit: bool
    embedder_version: str
    scorer_version: str
    tier_max_score: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    predicted_quality: _containers.ScalarMap[str, float]
    def __init__(self, complexity_score: _Optional[float] = ..., tier: _Optional[str] = ..., confidence: _Optional[float] = ..., category: _Optional[str] = ..., reason_codes: _Optional[_Iterable[_Union[ReasonCode, str]]] = ..., router_latency_ms: _Optional[float] = ..., cache_hit: _Optional[bool] = ..., embedder_version: _Optional[str] = ..., scorer_version: _Optional[str] = ..., tier_max_score: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., predicted_quality: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: RoutingDecision
    def __init__(self, decision: _Optional[_Union[RoutingDecision, _Mapping]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("request_id", "prompt", "messages", "sampling", "disable_escalation", "force_tier", "bypass_cache", "slo", "conversation_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DISABLE_ESCALATION_FIELD_NUMBER: _ClassVar[int]
    FORCE_TIER_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    sampling: _common_pb2.SamplingParams
    disable_escalation: bool
    force_tier: str
    bypass_cache: bool
    slo: Slo
    conversation_id: str
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., disable_escalation: _Optional[bool] = ..., force_tier: _Optional[str] = ..., bypass_cache: _Optional[bool] = ..., slo: _Optional[_Union[Slo, _Mapping]] = ..., conversation_id: _Optional[str] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("text", "tier")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    text: str
    tier: str
    def __init__(self, text: _Optional[str] = ..., tier: _Optional[str] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("from_tier", "to_tier", "reason", "confidence")
    FROM_TIER_FIELD_NUMBER: _ClassVar[int]
    TO_TIER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    from_tier: str
    to_tier: str
    reason: EscalationReason
    confidence: float
    def __init__(self, from_tier: _Optional[str] = ..., to_tier: _Optional[str] = ..., reason: _Optional[_Union[EscalationReason, str]] = ..., confidence: _Optional[float] = ...) -> None: ...

class StageLatencies(_message.Message):
    __slots__ = ("score_ms", "generate_ms", "validate_ms", "escalation_ms", "total_ms", "time_to_first_token_ms")
    SCORE_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_MS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    score_ms: float
    generate_ms: float
    validate_ms: float
    escalation_ms: float
    total_ms: float
    time_to_first_token_ms: float
    def __init__(self, score_ms: _Optional[float] = ..., generate_ms: _Optional[float] = ..., validate_ms: _Optional[float] = ..., escalation_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ...) -> None: ...

class TierAttempt(_message.Message):
    __slots__ = ("tier", "usage", "cost_usd", "finish_reason", "latency_ms", "delivered", "escalation_reason", "validation", "hedged", "judged_tokens")
    TIER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_REASON_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    HEDGED_FIELD_NUMBER: _ClassVar[int]
    JUDGED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    usage: _common_pb2.Usage
    cost_usd: float
    finish_reason: _common_pb2.FinishReason
    latency_ms: float
    delivered: bool
    escalation_reason: EscalationReason
    validation: ValidationStatus
    hedged: bool
    judged_tokens: int
    def __init__(self, tier: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., latency_ms: _Optional[float] = ..., delivered: _Optional[bool] = ..., escalation_reason: _Optional[_Union[EscalationReason, str]] = ..., validation: _Optional[_Union[ValidationStatus, str]] = ..., hedged: _Optional[bool] = ..., judged_tokens: _Optional[int] = ...) -> None: ...

class RouteSummary(_message.Message):
    __slots__ = ("tier", "escalated", "escalation_reason", "usage", "cost_usd", "latencies", "finish_reason", "confidence", "attempts", "validation")
    TIER_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LATENCIES_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    tier: str
    escalated: bool
    escalation_reason: EscalationReason
    usage: _common_pb2.Usage
    cost_usd: float
    latencies: StageLatencies
    finish_reason: _common_pb2.FinishReason
    confidence: float
    attempts: _containers.RepeatedCompositeFieldContainer[TierAttempt]
    validation: ValidationStatus
    def __init__(self, tier: _Optional[str] = ..., escalated: _Optional[bool] = ..., escalation_reason: _Optional[_Union[EscalationReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., latencies: _Optional[_Union[StageLatencies, _Mapping]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., confidence: _Optional[float] = ..., attempts: _Optional[_Iterable[_Union[TierAttempt, _Mapping]]] = ..., validation: _Optional[_Union[ValidationStatus, str]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("decision", "chunk", "escalation", "summary")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    decision: RoutingDecision
    chunk: TokenChunk
    escalation: Escalation
    summary: RouteSummary
    def __init__(self, decision: _Optional[_Union[RoutingDecision, _Mapping]] = ..., chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., escalation: _Optional[_Union[Escalation, _Mapping]] = ..., summary: _Optional[_Union[RouteSummary, _Mapping]] = ...) -> None: ...
