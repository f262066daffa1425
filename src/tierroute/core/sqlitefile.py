"""SQLite files the project writes (the routing log, the metrics store), opened one way.

Each kind of file is marked by SQLite's `application_id` and versioned by its `user_version`:
a file of another kind or another schema version is refused with what to do, never half-read
or silently rewritten. A new file gets its schema in one transaction, so a crash leaves no
half-made schema. A kind may list migrations: the writer (`create`) brings an older file up to
date in one transaction, and says so in the log; a reader never changes a file.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class FileError(ValueError):
    """A file that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class Kind:
    """One kind of file: what it is called, the config key that names it, its marks."""

    name: str  # "routing log"
    setting: str  # "router.routing_log"
    application_id: int
    version: int
    schema: str
    table: str  # a table every file of this kind has
    # migrations[i]: the SQL that takes a file from version i + 1 to version i + 2
    migrations: tuple[str, ...] = ()


def connect(path: Path, kind: Kind, create: bool) -> sqlite3.Connection:
    """An open file of `kind` at this schema version; created (with `create`) when missing."""
    if not create and not path.is_file():
        raise FileError(f"{path}: no such {kind.name} ({kind.setting} names where it is)")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        app, version = (
            db.execute("PRAGMA application_id").fetchone()[0],
            db.execute("PRAGMA user_version").fetchone()[0],
        )
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise FileError(f"{path}: not a SQLite {kind.name} ({exc})") from exc
    if not tables and create:
        db.executescript(
            f"BEGIN; {kind.schema} PRAGMA application_id={kind.application_id}; "
            f"PRAGMA user_version={kind.version}; COMMIT;"
        )
        return db
    if app != kind.application_id or kind.table not in tables:
        db.close()
        raise FileError(
            f"{path}: not a tierroute {kind.name} (application_id {app:#x}, tables "
            f"{sorted(tables) or 'none'}): point {kind.setting} at a new file"
        )
    first = kind.version - len(kind.migrations)  # the oldest version the migrations start from
    if create and first <= version < kind.version:
        steps = "".join(kind.migrations[v - first] for v in range(version, kind.version))
        db.executescript(f"BEGIN; {steps} PRAGMA user_version={kind.version}; COMMIT;")
        logger.warning(
            "%s: %s upgraded from schema version %d to %d", path, kind.name, version, kind.version
        )
        return db
    if version != kind.version:
        db.close()
        older = version < kind.version
        raise FileError(
            f"{path}: {kind.name} schema version {version} was written by "
            f"{'an older' if older else 'a newer'} tierroute; this one reads and writes version "
            f"{kind.version}. "
            + (
                "Whatever writes it (the setting " + kind.setting + ") upgrades it in place "
                "when it next opens it; or point " + kind.setting + " at a new file"
                if older and version >= first
                else f"Keep the file for that version's tools, and point {kind.setting} at a new "
                "file to record with this one"
                if older
                else f"Use the tierroute that wrote it, or point {kind.setting} at a new file"
            )
        )
    return db
