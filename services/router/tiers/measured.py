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
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tierroute.core.sqlitefile import FileError, Kind, connect

logger = logging.getLogger(__name__)

TTFT_MS = "ttft_ms"
TPOT_MS = "tpot_ms"
ERROR_RATE = "error_rate"
METRICS = (TTFT_MS, TPOT_MS, ERROR_RATE)
# A category's own figure is used once it carries this much weight (observations); before,
# the tier's figure over every category.
MIN_CATEGORY_WEIGHT = 3.0
FAILURE_WARNING_SECONDS = 60.0

# (tier, category, metric); category "" is the tier over every category.
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Figure:
    """A weighted average: `value`, carrying `weight` observations' worth as of `at`."""

    value: float
    weight: float
    at: float

    def decayed(self, now: float, half_life: float) -> float:
        """The figure's weight at `now`."""
        return self.weight * 0.5 ** (max(now - self.at, 0.0) / half_life)

    def merge(self, other: Figure, half_life: float) -> Figure:
        """The figure that saw both series of observations."""
        now = max(self.at, other.at)
        a, b = self.decayed(now, half_life), other.decayed(now, half_life)
        if a + b <= 0.0:  # both forgotten: the newer value stands
            return other if other.at >= self.at else self
        return Figure((self.value * a + other.value * b) / (a + b), a + b, now)


class Store(Protocol):
    """Where figures are kept between routers and restarts."""

    def exchange(self, observed: Mapping[Key, Figure], half_life: float) -> dict[Key, Figure]:
        """Merge `observed` into what is kept; return everything kept."""
        ...

    def close(self) -> None: ...


class StoreError(FileError):
    """A metrics store that cannot be used; the message says which and what to do."""


SCHEMA_VERSION = 1
KIND = Kind(
    "metrics store",
    "router.metrics_store",
    0x74726D73,  # "trms"
    SCHEMA_VERSION,
    """
CREATE TABLE figures (
    tier TEXT NOT NULL,
    category TEXT NOT NULL,     -- '' for the tier over every category
    metric TEXT NOT NULL,       -- ttft_ms, tpot_ms, error_rate
    value REAL NOT NULL,
    weight REAL NOT NULL,       -- observations' worth, as of `at`
    at REAL NOT NULL,           -- unix time of the last observation
    PRIMARY KEY (tier, category, metric)
);
""",
    "figures",
)


class SqliteStore:
    """The embedded store: one SQLite file, shared by every router on the machine that names
    it (each exchange is one write transaction)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = connect(path, KIND, create=True)
        except FileError as error:
            raise StoreError(str(error)) from None
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")

    def exchange(self, observed: Mapping[Key, Figure], half_life: float) -> dict[Key, Figure]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, figure in observed.items():
                row = db.execute(
                    "SELECT value, weight, at FROM figures "
                    "WHERE tier = ? AND category = ? AND metric = ?",
                    key,
                ).fetchone()
                if row is not None:
                    figure = Figure(*row).merge(figure, half_life)
                db.execute(
                    "INSERT OR REPLACE INTO figures VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, figure.value, figure.weight, figure.at),
                )
            rows = db.execute("SELECT tier, category, metric, value, weight, at FROM figures")
            kept = {(r[0], r[1], r[2]): Figure(r[3], r[4], r[5]) for r in rows}
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return kept

    def close(self) -> None:
        self._db.close()


def open_store(location: Path) -> Store:
    """The store `router.metrics_store` names."""
    return SqliteStore(location)


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

    # --- the request path: memory only ---

    def observe(self, tier: str, category: str, metric: str, value: float) -> None:
        """One observation of `metric` on `tier` for a prompt of `category`."""
        now = self.clock()
        point = Figure(value, 1.0, now)
        keys = [(tier, "", metric)] + ([(tier, category, metric)] if category else [])
        with self._lock:
            for key in keys:
                for figures in (self._view, self._pending):
                    old = figures.get(key)
                    figures[key] = point if old is None else old.merge(point, self.half_life)

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
        except (sqlite3.Error, OSError) as exc:
            with self._lock:  # keep what was observed for the next try
                self._pending = _merged(observed, self._pending, self.half_life)
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
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
