"""What the router has measured of each tier: time to first token, time per output token and
error rate, per tier and per prompt category, as exponentially weighted averages in time.

An observation's weight halves every `router.metrics_half_life_seconds`, so a tier that turns
slow or starts failing shows within about that long, and one that recovers is forgiven as fast.
A figure is kept as (value, weight, time of the last observation): two such figures merge into
the one that would have seen both series of observations (`Figure.merge`), which is how
several routers share one store and how benchmark figures blend with live ones.

Requests only touch memory. A sync thread, every `router.metrics_sync_seconds`, hands what was
observed since the last sync to the store (which merges it into what is kept there) and takes
back everything the store holds, other routers' observations included. A store that fails
leaves routing on the last figures it gave, says so in the log, and is retried at the next
sync with nothing observed lost meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from tierroute.router import metrics
from tierroute.router.tiers.store import Figure, Key, Store, StoreDown

logger = logging.getLogger(__name__)

TTFT_MS = "ttft_ms"
TPOT_MS = "tpot_ms"
ERROR_RATE = "error_rate"
METRICS = (TTFT_MS, TPOT_MS, ERROR_RATE)
# A category's own figure is used once it carries this much weight (observations); before,
# the tier's figure over every category.
MIN_CATEGORY_WEIGHT = 3.0
FAILURE_WARNING_SECONDS = 60.0


class Measurements:
    """The figures a router routes on: what the store held at the last sync, with everything
    this router observed since merged in."""

    def __init__(
        self,
        half_life: float,
        store: Store | None = None,
        sync_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.half_life = half_life
        self.store = store
        self.sync_seconds = sync_seconds
        self.clock = clock
        self._view: dict[Key, Figure] = {}
        self._pending: dict[Key, Figure] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self._warned_at = -FAILURE_WARNING_SECONDS
        # Called (from the sync thread) with False when the store starts failing, True when it
        # is back: the router's health detail.
        self.on_store_state: Callable[[bool], None] | None = None

    @property
    def store_up(self) -> bool:
        """Whether the last sync with the store worked (True without a store)."""
        return self._failing_since is None

    # --- the request path: memory only ---

    def observe(self, tier: str, category: str, metric: str, value: float) -> None:
        """One observation of `metric` on `tier` for a prompt of `category` (also a Prometheus
        observation: router/metrics.py)."""
        if metric == TTFT_MS:
            metrics.TTFT.labels(tier).observe(value / 1000.0)
        elif metric == TPOT_MS:
            metrics.TPOT.labels(tier).observe(value / 1000.0)
        elif metric == ERROR_RATE:
            metrics.TIER_CALLS.labels(tier, "error" if value else "ok").inc()
        now = self.clock()
        point = Figure(value, 1.0, now)
        keys = [(tier, "", metric)] + ([(tier, category, metric)] if category else [])
        with self._lock:
            for key in keys:
                for figures in (self._view, self._pending):
                    old = figures.get(key)
                    figures[key] = point if old is None else old.merge(point, self.half_life)

    def absorb(self, figures: Mapping[Key, Figure]) -> None:
        """Figures measured elsewhere (a benchmark run), merged in as observations are."""
        with self._lock:
            self._view = _merged(self._view, figures, self.half_life)
            self._pending = _merged(self._pending, figures, self.half_life)

    def figure(self, tier: str, metric: str, category: str = "") -> float | None:
        """The measured `metric` of `tier` for prompts of `category` (its own figure once it
        has weight enough, else the tier's over every category); None if never measured."""
        with self._lock:
            own = self._view.get((tier, category, metric)) if category else None
            if own is not None and own.decayed(self.clock(), self.half_life) >= MIN_CATEGORY_WEIGHT:
                return own.value
            overall = self._view.get((tier, "", metric))
            return overall.value if overall is not None else (own.value if own else None)

    def snapshot(self) -> dict[Key, Figure]:
        with self._lock:
            return dict(self._view)

    @property
    def store_failing(self) -> bool:
        return self._failing_since is not None

    # --- the sync thread ---

    def start(self) -> None:
        """Read the store once (so the first requests route on its figures), then keep in
        sync with it in the background."""
        if self.store is None:
            return
        self.sync()
        self._thread = threading.Thread(target=self._run, name="metrics-sync", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Hand the store what was observed since the last sync; take back what it keeps."""
        if self.store is None:
            return
        with self._lock:
            observed, self._pending = self._pending, {}
        try:
            kept = self.store.exchange(observed, self.half_life)
        except StoreDown as exc:
            with self._lock:  # keep what was observed for the next try
                self._pending = _merged(observed, self._pending, self.half_life)
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
                if self.on_store_state is not None:
                    self.on_store_state(False)
            if now - self._warned_at >= FAILURE_WARNING_SECONDS:
                self._warned_at = now
                logger.warning(
                    "metrics store %s failed (%s): routing goes on with the figures it last "
                    "gave and this router's own observations; retrying every %g s",
                    getattr(self.store, "path", self.store),
                    exc,
                    self.sync_seconds,
                )
            return
        if self._failing_since is not None:
            logger.warning(
                "metrics store %s is back after %.0f s; figures in sync again",
                getattr(self.store, "path", self.store),
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
            if self.on_store_state is not None:
                self.on_store_state(True)
        with self._lock:
            self._view = _merged(kept, self._pending, self.half_life)

    def close(self) -> None:
        """Stop syncing; hand the store what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.store is not None:
            self.sync()
            self.store.close()
            self.store = None

    def _run(self) -> None:
        while not self._stop.wait(self.sync_seconds):
            self.sync()


def _merged(
    base: Mapping[Key, Figure], extra: Mapping[Key, Figure], half_life: float
) -> dict[Key, Figure]:
    out = dict(base)
    for key, figure in extra.items():
        old = out.get(key)
        out[key] = figure if old is None else old.merge(figure, half_life)
    return out
