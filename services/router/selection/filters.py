"""Filters applied to a ranking at the moment a request is routed, beside those the decision
is made with (policy.py): each takes the ranking and says which tiers stay, and why the others
were passed over, in the decision's reason codes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tierroute.router.selection.policy import SKIP_REASONS
from tierroute.router.v1 import router_service_pb2 as pb


def passed_over(decision: pb.RoutingDecision, skipped: Sequence[tuple[str, pb.ReasonCode]]) -> None:
    """Say in `decision` why each of `skipped` (tier, reason) was passed over."""
    for name, reason in skipped:
        if reason not in decision.reason_codes:
            decision.reason_codes.append(reason)
        decision.reasons.append(f"{SKIP_REASONS[reason]}:{name}")


def judgeable(
    ranking: list[str], judged: Callable[[str], bool], last: str, decision: pb.RoutingDecision
) -> list[str]:
    """While the validator is down (and the policy is to escalate), the tiers of `ranking`
    whose answers can still be delivered: those it would not judge (`judged`), and the last
    (large) tier. An answer from a tier it would judge would be thrown away: such tiers are
    passed over instead of wasting their work."""
    kept = [t for t in ranking if t == last or not judged(t)]
    if kept[:1] != ranking[:1]:
        passed_over(
            decision,
            [(t, pb.REASON_CODE_VALIDATOR_UNAVAILABLE) for t in ranking if t not in kept],
        )
    return kept
