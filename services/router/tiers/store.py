"""The metrics store: where the tiers' measured figures, benchmark runs and conversation
affinity are shared between router replicas and kept across restarts. A SQLite file on one
machine, or Redis for several (`router.metrics_store`)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tierroute.core.config import REDIS_SCHEMES
from tierroute.core.sqlitefile import FileError, Kind, connect

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
