from tierroute.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PolicyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_KIND_UNSPECIFIED: _ClassVar[PolicyKind]
    POLICY_KIND_SELF_REPORTED: _ClassVar[PolicyKind]
    POLICY_KIND_LOGPROB: _ClassVar[PolicyKind]

class LogprobAggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOGPROB_AGGREGATION_UNSPECIFIED: _ClassVar[LogprobAggregation]
    LOGPROB_AGGREGATION_MEAN: _ClassVar[LogprobAggregation]
    LOGPROB_AGGREGATION_MIN_WINDOW: _ClassVar[LogprobAggregation]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_DELIVER: _ClassVar[Verdict]
    VERDICT_ESCALATE: _ClassVar[Verdict]
    VERDICT_UNDECIDED: _ClassVar[Verdict]

class ValidationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALIDATION_REASON_UNSPECIFIED: _ClassVar[ValidationReason]
    VALIDATION_REASON_CONFIDENT: _ClassVar[ValidationReason]
    VALIDATION_REASON_LOW_CONFIDENCE: _ClassVar[ValidationReason]
    VALIDATION_REASON_PARSE_FAILURE: _ClassVar[ValidationReason]
    VALIDATION_REASON_SCHEMA_VIOLATION: _ClassVar[ValidationReason]
    VALIDATION_REASON_EMPTY_ANSWER: _ClassVar[ValidationReason]
    VALIDATION_REASON_TOO_CLOSE: _ClassVar[ValidationReason]
POLICY_KIND_UNSPECIFIED: PolicyKind
POLICY_KIND_SELF_REPORTED: PolicyKind
POLICY_KIND_LOGPROB: PolicyKind
LOGPROB_AGGREGATION_UNSPECIFIED: LogprobAggregation
LOGPROB_AGGREGATION_MEAN: LogprobAggregation
LOGPROB_AGGREGATION_MIN_WINDOW: LogprobAggregation
VERDICT_UNSPECIFIED: Verdict
VERDICT_DELIVER: Verdict
VERDICT_ESCALATE: Verdict
VERDICT_UNDECIDED: Verdict
VALIDATION_REASON_UNSPECIFIED: ValidationReason
VALIDATION_REASON_CONFIDENT: ValidationReason
VALIDATION_REASON_LOW_CONFIDENCE: ValidationReason
VALIDATION_REASON_PARSE_FAILURE: ValidationReason
VALIDATION_REASON_SCHEMA_VIOLATION: ValidationReason
VALIDATION_REASON_EMPTY_ANSWER: ValidationReason
VALIDATION_REASON_TOO_CLOSE: ValidationReason

class ValidationPolicy(_message.Message):
    __slots__ = ("kind", "min_confidence", "fallback_on_parse_error", "aggregation", "window", "prefix_margin")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ON_PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PREFIX_MARGIN_FIELD_NUMBER: _ClassVar[int]
    kind: PolicyKind
    min_confidence: float
    fallback_on_parse_error: bool
    aggregation: LogprobAggregation
    window: int
    prefix_margin: float
    def __init__(self, kind: _Optional[_Union[PolicyKind, str]] = ..., min_confidence: _Optional[float] = ..., fallback_on_parse_error: _Optional[bool] = ..., aggregation: _Optional[_Union[LogprobAggregation, str]] = ..., window: _Optional[int] = ..., prefix_margin: _Optional[float] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("request_id", "prompt", "answer", "logprobs", "policy", "partial")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt: str
    answer: str
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
    policy: ValidationPolicy
    partial: bool
    def __init__(self, request_id: _Optional[str] = ..., prompt: _Optional[str] = ..., answer: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., policy: _Optional[_Union[ValidationPolicy, _Mapping]] = ..., partial: _Optional[bool] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("verdict", "confidence", "reason", "content", "detail")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    confidence: float
    reason: ValidationReason
    content: str
    detail: str
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., confidence: _Optional[float] = ..., reason: _Optional[_Union[ValidationReason, str]] = ..., content: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...
