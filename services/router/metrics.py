"""The router's Prometheus metrics (served with the RPC metrics on `router.metrics_listen`,
tierroute.runtime.metrics). Recorded where the thing happens, once:

- decisions (Score and Route alike), the score histogram and the routing cache: the decider and
  selection/decision.py;
- time to first token, time per output token and tier call outcomes: the live measurements
  the router routes on (tiers/measured.py), so the metrics and the routing see the same
  observations;
- tokens, cost, the cost on the large tier alone, escalations and routes by status: the end
  of each Route (route/flow.py);
- HTTP requests: the front (front/openai_api.py);
- breaker, replica, store and operating-point state: read from the router at scrape time.

Labels are bounded: tier, reason code, client (a token's name, or `peer:<address>` without
tokens), status code. Never a prompt, a request id or a token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tierroute.router.v1 import router_service_pb2 as pb
from tierroute.runtime.metrics import LATENCY_BUCKETS

DECISIONS = Counter(
    "tierroute_routing_decisions",
    "Routing decisions (Score and Route), by the tier chosen and each reason code.",
    ("tier", "reason"),
)
DEGRADED = Counter(
    "tierroute_score_degraded",
    "Prompts the embedder could not score within the budget, by why: queue_full, "
    "predicted_late (its measured pace said too late), late (the budget ran out), failed. "
    "The degraded scorer decided them (reason score_degraded), or without one the default "
    "tier (reason router_fallback).",
    ("why",),
)
SCORES = Histogram(
    "tierroute_complexity_score",
    "Complexity scores of the prompts scored (0 to 10; not the fallback's, not a forced tier's).",
    buckets=tuple(x / 2 for x in range(1, 21)),
)
CACHE = Counter(
    "tierroute_routing_cache_lookups",
    "Routing-cache lookups (requests with bypass_cache are not looked up), by result.",
    ("result",),
)
TTFT = Histogram(
    "tierroute_time_to_first_token_seconds",
    "Time from a tier call to its first token, as the router saw it, by tier.",
    ("tier",),
    buckets=LATENCY_BUCKETS,
)
TPOT = Histogram(
    "tierroute_time_per_output_token_seconds",
    "Time per output token after the first, by tier.",
    ("tier",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2),
)
TIER_CALLS = Counter(
    "tierroute_tier_calls",
    "Calls of a tier's Generate, by tier and outcome (ok or error).",
    ("tier", "outcome"),
)
ROUTES = Counter(
    "tierroute_routes",
    "Routes ended, by the tier that answered (empty: none) and gRPC status code name.",
    ("tier", "code"),
)
JUDGED_TOKENS = Histogram(
    "tierroute_judged_tokens",
    "Tokens of a held answer that the deciding verdict judged (the prefix with commit: prefix, "
    "the whole answer otherwise), by tier and verdict (deliver or escalate).",
    ("tier", "verdict"),
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512, 1024),
)
ESCALATIONS = Counter(
    "tierroute_escalations",
    "Answers not delivered and moved to a larger tier, by the tier left and the reason.",
    ("tier", "reason"),
)
TOKENS = Counter(
    "tierroute_tokens",
    "Tokens over every tier call, by tier, client and kind (prompt or completion).",
    ("tier", "client", "kind"),
)
COST = Counter(
    "tierroute_cost_usd",
    "Cost in USD at the tiers' configured prices, over every tier call, by tier and client.",
    ("tier", "client"),
)
OVERLOAD = Counter(
    "tierroute_tier_overload",
    "Tier attempts that ended in overload, not failure (the breaker does not count them), by "
    "tier and what happened: spilled (no place within escalation.queue_wait_ms: a larger tier "
    "took it), refused (no place within the budget, no larger tier: RESOURCE_EXHAUSTED), "
    "tier_refused (the tier said RESOURCE_EXHAUSTED), queued_past_budget (the budget ran out "
    "while the tier, busy with others, had not started it).",
    ("tier", "what"),
)
REPLICA_CALLS = Counter(
    "tierroute_replica_calls",
    "Tier calls by the replica (upstream) that took them and how each ended: ok, or the kind "
    "of failure (unavailable, overloaded, bad_request, too_long, deadline, stalled, cancelled).",
    ("tier", "replica", "outcome"),
)
QUEUE_SECONDS = Histogram(
    "tierroute_tier_queue_seconds",
    "Time a tier call waited in the router for a place within the tier's concurrency limit.",
    ("tier",),
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge(
    "tierroute_routes_in_flight", "Routes in progress (gRPC Route and the HTTP front)."
)
COST_IF_LARGE = Counter(
    "tierroute_large_tier_cost_usd",
    "What the delivered answers' tokens would have cost at the large (last) tier's prices, by "
    "client: savings = this - tierroute_cost_usd_total.",
    ("client",),
)


HTTP_REQUESTS = Counter(
    "tierroute_http_requests",
    "Requests to the HTTP front, by method, path and HTTP status code.",
    ("method", "path", "code"),
)
HTTP_SECONDS = Histogram(
    "tierroute_http_request_duration_seconds",
    "Time from an HTTP request's arrival to its last byte (a stream's whole length).",
    ("method", "path"),
    buckets=LATENCY_BUCKETS,
)


SHADOW_COMPARISONS = Counter(
    "tierroute_shadow_comparisons",
    "Shadow comparisons (route/shadow.py): a small tier's delivered answer against the large "
    "tier's answer to the same request, by complexity-score band and agreed (true or false).",
    ("band", "agreed"),
)
SHADOW_SIMILARITY = Histogram(
    "tierroute_shadow_similarity",
    "Similarity of the small and the large tier's answers in shadow comparisons (1 or 0 for "
    "exact comparison of short answers, else the cosine similarity of their embeddings).",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0),
)
SHADOW_DROPPED = Counter(
    "tierroute_shadow_dropped",
    "Sampled answers not compared, by reason: budget (shadow.max_in_flight), busy (live calls "
    "in progress), preempted (cancelled for a live call), tier_down, failed, shutdown.",
    ("reason",),
)
SHADOW_IN_FLIGHT = Gauge(
    "tierroute_shadow_in_flight", "Shadow calls to the large tier in progress."
)


def shadowed(band: str, agreed: bool, similarity: float) -> None:
    SHADOW_COMPARISONS.labels(band, "true" if agreed else "false").inc()
    SHADOW_SIMILARITY.observe(similarity)


def decided(decision: pb.RoutingDecision, looked_up: bool) -> None:
    for code in decision.reason_codes or [pb.REASON_CODE_UNSPECIFIED]:
        DECISIONS.labels(decision.tier, reason_name(code)).inc()
    unscored = (pb.REASON_CODE_ROUTER_FALLBACK, pb.REASON_CODE_FORCED_TIER)
    if not any(code in decision.reason_codes for code in unscored):
        SCORES.observe(decision.complexity_score)
    if looked_up:
        CACHE.labels("hit" if decision.cache_hit else "miss").inc()


def routed(summary: pb.RouteSummary, code: str, client: str, if_large: float | None) -> None:
    """One Route ended; `if_large`: its delivered tokens at the large tier's prices."""
    ROUTES.labels(summary.tier, code).inc()
    for attempt in summary.attempts:
        usage = attempt.usage
        TOKENS.labels(attempt.tier, client, "prompt").inc(usage.prompt_tokens)
        TOKENS.labels(attempt.tier, client, "completion").inc(usage.completion_tokens)
        COST.labels(attempt.tier, client).inc(attempt.cost_usd)
        if not attempt.delivered and attempt.escalation_reason:
            ESCALATIONS.labels(attempt.tier, escalation_name(attempt.escalation_reason)).inc()
    if if_large is not None:
        COST_IF_LARGE.labels(client).inc(if_large)


def reason_name(code: int) -> str:
    return pb.ReasonCode.Name(code).removeprefix("REASON_CODE_").lower()


def escalation_name(code: int) -> str:
    return pb.EscalationReason.Name(code).removeprefix("ESCALATION_REASON_").lower()


@dataclass(frozen=True)
class State:
    """What the router reports of its state at each scrape."""

    # tier -> breaker state name (closed, half_open, open)
    breakers: Callable[[], dict[str, str]]
    # (tier, replica address) -> ejected
    replicas: Callable[[], dict[tuple[str, str], bool]]
    # whether the metrics store is reachable
    store_up: Callable[[], bool]
    # the large tier's current threshold (score bound) and the target share (None: unset)
    operating: Callable[[], tuple[float, float | None]]
    # drift: each signal's value and whether it is out of its band
    drift: Callable[[], tuple[dict[str, float], dict[str, bool]]]
    # tier -> (concurrency limit, calls in flight, calls waiting for a place)
    slots: Callable[[], dict[str, tuple[int, int, int]]] = dict
    # (tier, kind, model, replica address) of every replica
    replica_info: Callable[[], list[tuple[str, str, str, str]]] = list


BREAKER_STATES = ("closed", "half_open", "open")


class _StateCollector(Collector):
    """Reads the router's state at scrape time. One per process; the router that started last
    is the one reported (tests start several in one process)."""

    def __init__(self) -> None:
        self.state: State | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.state
        if state is None:
            return
        breaker = GaugeMetricFamily(
            "tierroute_circuit_breaker_state",
            "1 for the state each tier's circuit breaker is in (closed, half_open, open).",
            labels=("tier", "state"),
        )
        for tier, now in state.breakers().items():
            for name in BREAKER_STATES:
                breaker.add_metric((tier, name), 1.0 if name == now else 0.0)
        yield breaker
        ejected = GaugeMetricFamily(
            "tierroute_replica_ejected",
            "1 while a tier replica is ejected after consecutive failures.",
            labels=("tier", "replica"),
        )
        for (tier, address), out in state.replicas().items():
            ejected.add_metric((tier, address), 1.0 if out else 0.0)
        yield ejected
        info = GaugeMetricFamily(
            "tierroute_tier_info",
            "1 for each replica of each tier: its kind (tierroute: our tier service; openai: an "
            "OpenAI-compatible server), the model it is asked for, and where it is dialled.",
            labels=("tier", "kind", "model", "replica"),
        )
        for labels in state.replica_info():
            info.add_metric(labels, 1.0)
        yield info
        yield GaugeMetricFamily(
            "tierroute_metrics_store_up",
            "1 while the metrics store (router.metrics_store) is reachable.",
            value=1.0 if state.store_up() else 0.0,
        )
        threshold, target = state.operating()
        yield GaugeMetricFamily(
            "tierroute_operating_threshold",
            "The score above which the large (last) tier serves, as the router now applies it.",
            value=threshold,
        )
        if target is not None:
            yield GaugeMetricFamily(
                "tierroute_target_large_share",
                "The configured share of traffic for the large tier (router.target_large_share).",
                value=target,
            )
        limit = GaugeMetricFamily(
            "tierroute_tier_concurrency_limit",
            "The most calls this router sends a tier at once (tiers[].max_in_flight, or measured).",
            labels=("tier",),
        )
        running = GaugeMetricFamily(
            "tierroute_tier_in_flight",
            "Calls of this router to a tier in progress.",
            labels=("tier",),
        )
        queued = GaugeMetricFamily(
            "tierroute_tier_queued",
            "Calls waiting in this router for a place within a tier's concurrency limit.",
            labels=("tier",),
        )
        for name, (most, calls, waiting) in state.slots().items():
            limit.add_metric((name,), most)
            running.add_metric((name,), calls)
            queued.add_metric((name,), waiting)
        yield limit
        yield running
        yield queued
        values, alerts = state.drift()
        value = GaugeMetricFamily(
            "tierroute_drift_value",
            "Each drift signal over the recent window: score (PSI of live scores against the "
            "calibration scores), large_share, escalation_rate.",
            labels=("signal",),
        )
        for signal, v in values.items():
            value.add_metric((signal,), v)
        yield value
        alert = GaugeMetricFamily(
            "tierroute_drift_alert",
            "1 while a drift signal is outside its band (router.drift_*).",
            labels=("signal",),
        )
        for signal, out in alerts.items():
            alert.add_metric((signal,), 1.0 if out else 0.0)
        yield alert


STATE = _StateCollector()
REGISTRY.register(STATE)
