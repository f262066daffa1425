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

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tierroute.core.config import REDIS_SCHEMES
from tierroute.core.sqlitefile import FileError, Kind, connect
from tierroute.router import metrics

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

    def record_benchmark(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Keep a benchmark run's table (`tierroute bench-tiers`): one row per tier and
        category, with `at`, `tier`, `model` and `category` among its fields."""
        ...

    def benchmarks(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest benchmark rows, newest first."""
        ...

    def affinity(self, conversation: str) -> str | None:
        """The tier a conversation (its id's SHA-256) is held to, if not expired."""
        ...

    def hold(self, conversation: str, tier: str, ttl_seconds: float) -> None:
        """Hold a conversation to `tier` for `ttl_seconds` from now."""
        ...

    def close(self) -> None: ...


class StoreError(FileError):
    """A metrics store that cannot be used at start; the message says which and what to do."""


class StoreDown(Exception):
    """The store failed an exchange (a disk error, Redis gone): retried at the next sync."""


SCHEMA_VERSION = 2
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
CREATE TABLE benchmarks (
    at REAL NOT NULL,           -- unix time of the run
    tier TEXT NOT NULL,
    model TEXT NOT NULL,        -- the tier's model identity, as its Describe reported it
    category TEXT NOT NULL,     -- '' for the tier over every category
    row TEXT NOT NULL           -- JSON: every figure of the run for this tier and category
);
CREATE INDEX benchmarks_at ON benchmarks (at);
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
        # Added after schema 2 without a version change: older files get it on first open.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS affinity (conversation TEXT PRIMARY KEY, "
            "tier TEXT NOT NULL, expires REAL NOT NULL)"
        )
        # The sync thread and the request path's affinity calls share the connection.
        self._lock = threading.Lock()

    def exchange(self, observed: Mapping[Key, Figure], half_life: float) -> dict[Key, Figure]:
        try:
            with self._lock:
                return self._exchange(observed, half_life)
        except (sqlite3.Error, OSError) as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc

    def _exchange(self, observed: Mapping[Key, Figure], half_life: float) -> dict[Key, Figure]:
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
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return kept

    def record_benchmark(self, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO benchmarks VALUES (?, ?, ?, ?, ?)",
                    [
                        (r["at"], r["tier"], r["model"], r["category"], json.dumps(dict(r)))
                        for r in rows
                    ],
                )
        except (sqlite3.Error, OSError) as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc

    def benchmarks(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT row FROM benchmarks ORDER BY at DESC, rowid LIMIT ?", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def affinity(self, conversation: str) -> str | None:
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT tier FROM affinity WHERE conversation = ? AND expires > ?",
                    (conversation, time.time()),
                ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc
        return None if row is None else str(row[0])

    def hold(self, conversation: str, tier: str, ttl_seconds: float) -> None:
        now = time.time()
        try:
            with self._lock:
                self._db.execute("DELETE FROM affinity WHERE expires <= ?", (now,))
                self._db.execute(
                    "INSERT OR REPLACE INTO affinity VALUES (?, ?, ?)",
                    (conversation, tier, now + ttl_seconds),
                )
        except (sqlite3.Error, OSError) as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._db.close()


# One Redis hash holds every figure: field "tier<US>category<US>metric", value
# "value weight at". The script merges a batch of observed figures into it as Figure.merge
# does, atomically (Redis runs one script at a time), and returns the whole hash.
REDIS_KEY = f"tierroute:metrics:v{SCHEMA_VERSION}"
REDIS_BENCHMARKS = f"tierroute:benchmarks:v{SCHEMA_VERSION}"  # a list, newest first
REDIS_BENCHMARKS_KEPT = 10_000
REDIS_AFFINITY = "tierroute:affinity:v1:"  # + the conversation id's SHA-256; expires itself
FIELD_SEPARATOR = "\x1f"
_MERGE = """
local half_life = tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local field = ARGV[i]
  local v, w, at = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local old = redis.call('HGET', KEYS[1], field)
  if old then
    local ov, ow, oat = string.match(old, '^(%S+) (%S+) (%S+)$')
    ov, ow, oat = tonumber(ov), tonumber(ow), tonumber(oat)
    local now = math.max(at, oat)
    local a = ow * math.pow(0.5, (now - oat) / half_life)
    local b = w * math.pow(0.5, (now - at) / half_life)
    if a + b > 0 then
      v, w, at = (ov * a + v * b) / (a + b), a + b, now
    elseif oat > at then
      v, w, at = ov, ow, oat
    end
  end
  redis.call('HSET', KEYS[1], field, string.format('%.17g %.17g %.17g', v, w, at))
end
return redis.call('HGETALL', KEYS[1])
"""


class RedisStore:
    """The store for routers on several machines: one Redis (`redis://host:port/db`)."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        import redis

        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.path = _redacted(url)
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self._client.ping()
            kind = self._client.type(REDIS_KEY)
        except (ValueError, *self._errors) as exc:
            raise StoreError(
                f"{self.path}: cannot reach Redis ({type(exc).__name__}: {exc}): start it, or "
                "point router.metrics_store at one that runs (or at a SQLite file)"
            ) from None
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind not in ("none", "hash"):
            raise StoreError(
                f"{self.path}: key {REDIS_KEY!r} holds a {kind}, not tierroute's metrics: "
                "use another Redis database (redis://host:port/N)"
            )
        self._merge = self._client.register_script(_MERGE)

    def exchange(self, observed: Mapping[Key, Figure], half_life: float) -> dict[Key, Figure]:
        args: list[str] = [repr(half_life)]
        for key, f in observed.items():
            args += [FIELD_SEPARATOR.join(key), repr(f.value), repr(f.weight), repr(f.at)]
        try:
            flat = self._merge(keys=[REDIS_KEY], args=args)
        except self._errors as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc
        kept: dict[Key, Figure] = {}
        for field, value in zip(flat[::2], flat[1::2], strict=True):
            tier, category, metric = field.decode().split(FIELD_SEPARATOR)
            v, w, at = (float(x) for x in value.decode().split())
            kept[(tier, category, metric)] = Figure(v, w, at)
        return kept

    def record_benchmark(self, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            pipe = self._client.pipeline()
            pipe.lpush(REDIS_BENCHMARKS, *[json.dumps(dict(r)) for r in reversed(rows)])
            pipe.ltrim(REDIS_BENCHMARKS, 0, REDIS_BENCHMARKS_KEPT - 1)
            pipe.execute()
        except self._errors as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc

    def benchmarks(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self._client.lrange(REDIS_BENCHMARKS, 0, limit - 1)]

    def affinity(self, conversation: str) -> str | None:
        try:
            tier = self._client.get(REDIS_AFFINITY + conversation)
        except self._errors as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc
        return None if tier is None else tier.decode() if isinstance(tier, bytes) else str(tier)

    def hold(self, conversation: str, tier: str, ttl_seconds: float) -> None:
        try:
            self._client.set(
                REDIS_AFFINITY + conversation, tier, px=max(1, int(ttl_seconds * 1000))
            )
        except self._errors as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._client.close()


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"


def open_store(location: str) -> Store:
    """The store `router.metrics_store` names: a Redis URL, or a SQLite file's path."""
    if location.startswith(REDIS_SCHEMES):
        return RedisStore(location)
    return SqliteStore(Path(location))


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
