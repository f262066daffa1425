"""Filters applied to a ranking at the moment a request is admitted, after those the ranking
is made with (selector.py): the validator down, the conversation's held tier, each tier's
breaker and replicas. A Route hands them to the decider as an `Admit`; decision.py runs them
on the selection before it builds the decision, so the decision is built once and never edited."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tierroute.router.selection.policy import SKIP_REASONS
from tierroute.router.v1 import router_service_pb2 as pb


@dataclass
class Admitted:
    """The tier that serves, and why the tiers ranked before it were passed over (reason codes
    and `<reason>:<tier>` strings, in the order the filters ran)."""

    tier: str = ""
    codes: list[pb.ReasonCode] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def passed_over(self, skipped: Sequence[tuple[str, pb.ReasonCode]]) -> None:
        """Say why each of `skipped` (tier, reason) was passed over."""
        for name, reason in skipped:
            if reason not in self.codes:
                self.codes.append(reason)
            self.reasons.append(f"{SKIP_REASONS[reason]}:{name}")


# The selection's ranking in, the tier admitted out (or the project's Unavailable).
Admit = Callable[[list[str]], Admitted]


def judgeable(
    ranking: list[str], judged: Callable[[str], bool], last: str
) -> tuple[list[str], list[tuple[str, pb.ReasonCode]]]:
    """While the validator is down (and the policy is to escalate), the tiers of `ranking`
    whose answers can still be delivered: those it would not judge (`judged`), and the last
    (large) tier; and the ones passed over before the first of them. An answer from a tier it
    would judge would be thrown away: such tiers are passed over instead of wasting their
    work."""
    kept = [t for t in ranking if t == last or not judged(t)]
    if kept[:1] == ranking[:1]:
        return kept, []
    return kept, [(t, pb.REASON_CODE_VALIDATOR_UNAVAILABLE) for t in ranking if t not in kept]
