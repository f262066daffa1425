"""Bootstrap intervals that say when they cannot be had.

A statistic of a resample may be undefined (NaN): APGR where the two models score the same on
average, AUC where a resample holds one class only. Such resamples are left out while they are
rare; once more than `MAX_UNDEFINED` of them are undefined, the interval is reported undefined,
with why, rather than computed from the few resamples that happened to be defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
# The largest share of undefined resamples an interval may leave out and still be reported.
MAX_UNDEFINED = 0.05


@dataclass(frozen=True)
class Interval:
    """A 95% percentile interval, or (low and high None) why there is none."""

    low: float | None
    high: float | None
    undefined: str = ""
    # Resamples whose statistic was undefined and left out.
    left_out: int = 0

    def bounds(self) -> list[float] | None:
        """[low, high] for a JSON result; None when undefined."""
        if self.low is None or self.high is None:
            return None
        return [self.low, self.high]

    def text(self, fmt: str = ".3f") -> str:
        if self.low is None or self.high is None:
            return f"undefined ({self.undefined})"
        return f"{self.low:{fmt}}-{self.high:{fmt}}"


def interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    why_undefined: str,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The 95% percentile interval of `statistic(indices)` over `resamples` resamples of the
    n rows; `why_undefined` says what an undefined (NaN) resample means."""
    if n < 2:
        return Interval(None, None, f"{n} row(s): nothing to resample")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad > MAX_UNDEFINED * resamples:
        return Interval(
            None,
            None,
            f"in {bad} of {resamples} resamples {why_undefined}",
            left_out=bad,
        )
    low, high = np.percentile(values[np.isfinite(values)], [2.5, 97.5])
    return Interval(float(low), float(high), left_out=bad)
