"""SQLite persistence of models, endpoint configs and endpoints (the embedded default).

Every write is one transaction, committed before the API answers, so a router killed at any
instant restarts from the last acknowledged state. The router runs every call on its event-loop
thread without awaiting in between a check and its write, so concurrent API calls are
serialized and cannot interleave inside an operation; the primary keys (``COLLATE NOCASE``,
names are unique ignoring case as in SageMaker) refuse a duplicate even if that ever changed.
WAL mode keeps readers (another process inspecting the file) from blocking the router;
``synchronous=NORMAL`` makes a commit survive the router process being killed (SIGKILL, OOM)
without an fsync per call on the event loop — only a power loss can take back the last commits,
and the file stays consistent even then.

One router owns a state file at a time: :meth:`Store.open` takes an exclusive ``flock`` on
``<file>.lock`` (released by the kernel when the process dies, so a killed router never leaves a
stale lock behind).

An endpoint row keeps a snapshot of what it serves (its endpoint config and models as request
bodies): SageMaker lets users delete a model or config that an endpoint uses, and the endpoint
must still come back after a restart.

Tags (AddTags / ListTags / DeleteTags, and the ``Tags`` of Create*) live in their own table,
keyed by resource kind and name; a resource's tags go in the transaction that inserts it and
out with the one that deletes it. Schema 1 had no tags table: opening such a file adds it and
copies the ``Tags`` kept in the stored request bodies into it, so tags given at Create* before
the upgrade are listed too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from ..arns import ResourceKind
from ..errors import ConfigError, ServiceUnavailable

#: Bumped when the schema changes; a file written by a newer router is refused, not misread.
#: 2 added the tags table (filled from the stored bodies when a schema-1 file is opened); 3 the
#: autoscaling table (empty when an older file is opened: those routers had no autoscaling).
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    body BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoint_configs (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    body BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    body BLOB NOT NULL,
    config_name TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_reason TEXT,
    created REAL NOT NULL,
    modified REAL NOT NULL,
    deployed BLOB,
    pending BLOB
);
CREATE TABLE IF NOT EXISTS tags (
    kind TEXT NOT NULL,  -- the ARN's resource type: model, endpoint-config, endpoint
    name TEXT NOT NULL COLLATE NOCASE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, name, key)
);
CREATE TABLE IF NOT EXISTS autoscaling (
    kind TEXT NOT NULL,  -- target, policy or activity (Application Auto Scaling's objects)
    key TEXT NOT NULL,  -- the target's ResourceId and dimension, then the policy name or id
    body BLOB NOT NULL,  -- the object as its Describe* call answers it
    PRIMARY KEY (kind, key)
);
"""

ResourceTable = Literal["models", "endpoint_configs"]
#: ``capacity``: a variant's DesiredInstanceCount and DesiredWeight, restored at start.
AutoscalingKind = Literal["target", "policy", "activity", "capacity"]
#: (Key, Value) pairs in the order they were first added.
Tags = Sequence[tuple[str, str]]
_TABLE_KINDS: dict[str, ResourceKind] = {"models": "model", "endpoint_configs": "endpoint-config"}


class DuplicateName(Exception):
    """A row with this name (compared ignoring case) exists already."""


@dataclass(frozen=True, slots=True)
class StoredResource:
    name: str
    body: dict[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class StoredEndpoint:
    name: str
    #: The CreateEndpoint request body.
    body: dict[str, Any]
    #: The endpoint config that serves (or, while Creating, is being brought up).
    config_name: str
    status: str
    failure_reason: str | None
    created: float
    modified: float
    #: The fleet that serves: ``{"config": <CreateEndpointConfig body>,
    #: "models": {name: <CreateModel body>}, "at": <epoch seconds>}``.
    deployed: dict[str, Any] | None
    #: The same for a fleet being brought up (Creating, or Updating to a new config).
    pending: dict[str, Any] | None


class Store:
    """The state file of one router; open it with :meth:`open`."""

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self._db = db
        self._lock_fd = lock_fd
        #: Set when the router begins to stop: from then on no call may change anything.
        self.closing = False
        self.closed = False

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating it if needed) and lock the state file; :class:`ConfigError` when
        another router holds it or it is not a state file this router can read."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = acquire_lock(path.with_name(path.name + ".lock"), f"state file {path}")
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                _prepare(db, path)
            except BaseException:
                db.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path, db, lock_fd)

    def for_change(self) -> Store:
        """This store, for a call about to change something; refused once the router stops."""
        if self.closing:
            raise ServiceUnavailable("The router is stopping; retry against its next start.")
        return self

    def close(self) -> None:
        self.closing = self.closed = True
        self._db.close()
        os.close(self._lock_fd)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    # --- models and endpoint configs (one shape) ----------------------------------------------

    def insert_resource(
        self,
        table: ResourceTable,
        name: str,
        body: dict[str, Any],
        created: float,
        tags: Tags = (),
    ) -> None:
        """Insert a row and its tags; :class:`DuplicateName` when the name exists (ignoring
        case)."""
        try:
            with self.transaction() as db:
                db.execute(
                    f"INSERT INTO {_table(table)} (name, body, created) VALUES (?, ?, ?)",
                    (name, orjson.dumps(body), created),
                )
                _replace_tags(db, _TABLE_KINDS[table], name, tags)
        except sqlite3.IntegrityError as exc:
            raise DuplicateName(name) from exc

    def list_resources(self, table: ResourceTable) -> list[StoredResource]:
        rows = self._db.execute(
            f"SELECT name, body, created FROM {_table(table)} ORDER BY created, name"
        ).fetchall()
        return [StoredResource(r[0], orjson.loads(r[1]), r[2]) for r in rows]

    def delete_resource(self, table: ResourceTable, name: str) -> bool:
        """Delete a row and its tags (a resource created again later starts with none)."""
        with self.transaction() as db:
            cursor = db.execute(f"DELETE FROM {_table(table)} WHERE name = ?", (name,))
            _delete_tags(db, _TABLE_KINDS[table], name)
        return cursor.rowcount > 0

    # --- endpoints ----------------------------------------------------------------------------

    def insert_endpoint(self, endpoint: StoredEndpoint, tags: Tags = ()) -> None:
        """Insert a row and its tags; :class:`DuplicateName` when the name exists (ignoring
        case)."""
        try:
            with self.transaction() as db:
                db.execute(
                    f"INSERT INTO endpoints ({', '.join(_ENDPOINT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _ENDPOINT_COLUMNS)})",
                    _endpoint_row(endpoint),
                )
                _replace_tags(db, "endpoint", endpoint.name, tags)
        except sqlite3.IntegrityError as exc:
            raise DuplicateName(endpoint.name) from exc

    def save_endpoint(self, endpoint: StoredEndpoint) -> None:
        """Overwrite every column of an existing endpoint row in one transaction."""
        columns = _ENDPOINT_COLUMNS[1:]
        row = _endpoint_row(endpoint)
        with self.transaction() as db:
            cursor = db.execute(
                f"UPDATE endpoints SET {', '.join(f'{c} = ?' for c in columns)} WHERE name = ?",
                (*row[1:], row[0]),
            )
        if cursor.rowcount != 1:
            raise KeyError(endpoint.name)

    def get_endpoint(self, name: str) -> StoredEndpoint | None:
        row = self._db.execute(
            f"SELECT {', '.join(_ENDPOINT_COLUMNS)} FROM endpoints WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else _endpoint_from_row(row)

    def list_endpoints(self) -> list[StoredEndpoint]:
        rows = self._db.execute(
            f"SELECT {', '.join(_ENDPOINT_COLUMNS)} FROM endpoints ORDER BY created, name"
        ).fetchall()
        return [_endpoint_from_row(r) for r in rows]

    def delete_endpoint(self, name: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            _delete_tags(db, "endpoint", name)
        return cursor.rowcount > 0

    # --- tags ---------------------------------------------------------------------------------

    def list_tags(self, kind: ResourceKind, name: str) -> list[tuple[str, str]]:
        rows = self._db.execute(
            "SELECT key, value FROM tags WHERE kind = ? AND name = ? ORDER BY rowid",
            (kind, name),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def add_tags(self, kind: ResourceKind, name: str, tags: Tags) -> None:
        """Add tags, overwriting the value of a key the resource has already (AddTags)."""
        with self.transaction() as db:
            _upsert_tags(db, kind, name, tags)

    def delete_tags(self, kind: ResourceKind, name: str, keys: Iterable[str]) -> None:
        """Remove the tags with these keys; keys the resource does not have are ignored."""
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM tags WHERE kind = ? AND name = ? AND key = ?",
                [(kind, name, key) for key in keys],
            )

    # --- Application Auto Scaling's targets, policies, activities ------------------------------

    def list_autoscaling(self, kind: AutoscalingKind) -> list[tuple[str, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT key, body FROM autoscaling WHERE kind = ? ORDER BY rowid", (kind,)
        ).fetchall()
        return [(row[0], orjson.loads(row[1])) for row in rows]

    def change_autoscaling(
        self,
        put: Iterable[tuple[AutoscalingKind, str, dict[str, Any]]] = (),
        delete: Iterable[tuple[AutoscalingKind, str]] = (),
    ) -> None:
        """Write and delete objects in one transaction (a target goes with its policies)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM autoscaling WHERE kind = ? AND key = ?", list(delete))
            db.executemany(
                "INSERT INTO autoscaling (kind, key, body) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body",
                [(kind, key, orjson.dumps(body)) for kind, key, body in put],
            )


def acquire_lock(lock_path: Path, what: str) -> int:
    """Take an exclusive, non-blocking ``flock`` on ``lock_path`` (created if needed) and write
    this process's pid into it; :class:`ConfigError` naming the holder when it is taken."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"{what} is in use by another mce-router (pid {holder}); stop it, or give this "
            "router its own --state-dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"state file {path} was written by a newer mce-router (schema {version}, this "
                f"one knows {SCHEMA_VERSION}); upgrade this router or use another --state-dir"
            )
        db.executescript(_SCHEMA)
        if version != SCHEMA_VERSION:
            # One transaction: a router killed mid-upgrade leaves a schema-1 file behind.
            db.execute("BEGIN IMMEDIATE")
            if version == 1:
                _copy_create_tags(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"state file {path} cannot be used ({exc}); move it away to start with no models, "
            "endpoint configs or endpoints"
        ) from exc


def _replace_tags(db: sqlite3.Connection, kind: ResourceKind, name: str, tags: Tags) -> None:
    # A leftover row of a resource deleted by an older router must not reappear on a new one.
    _delete_tags(db, kind, name)
    _upsert_tags(db, kind, name, tags)


def _upsert_tags(db: sqlite3.Connection, kind: ResourceKind, name: str, tags: Tags) -> None:
    # ON CONFLICT keeps the row (and its rowid, hence its place in ListTags) and sets the value.
    db.executemany(
        "INSERT INTO tags (kind, name, key, value) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (kind, name, key) DO UPDATE SET value = excluded.value",
        [(kind, name, key, value) for key, value in tags],
    )


def _delete_tags(db: sqlite3.Connection, kind: ResourceKind, name: str) -> None:
    db.execute("DELETE FROM tags WHERE kind = ? AND name = ?", (kind, name))


def _copy_create_tags(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the ``Tags`` of the stored Create* bodies become rows of the tags table.
    Schema-1 routers kept Tags without checking them: only well-formed entries are copied."""
    sources: tuple[tuple[str, ResourceKind], ...] = (
        ("models", "model"),
        ("endpoint_configs", "endpoint-config"),
        ("endpoints", "endpoint"),
    )
    for table, kind in sources:
        for name, body in db.execute(f"SELECT name, body FROM {table}").fetchall():
            tags = orjson.loads(body).get("Tags")
            entries = tags if isinstance(tags, list) else []
            well_formed = [
                (tag["Key"], tag["Value"])
                for tag in entries
                if isinstance(tag, dict)
                and isinstance(tag.get("Key"), str)
                and isinstance(tag.get("Value"), str)
            ]
            _upsert_tags(db, kind, name, well_formed)


_TABLES: dict[str, str] = {"models": "models", "endpoint_configs": "endpoint_configs"}
_ENDPOINT_COLUMNS = (
    "name", "body", "config_name", "status", "failure_reason", "created", "modified",
    "deployed", "pending",
)  # fmt: skip


def _table(table: ResourceTable) -> str:
    # Table names cannot be bound parameters; only these two are ever interpolated.
    return _TABLES[table]


def _dump_optional(value: dict[str, Any] | None) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _load_optional(value: bytes | None) -> dict[str, Any] | None:
    return None if value is None else dict(orjson.loads(value))


def _endpoint_row(e: StoredEndpoint) -> tuple[Any, ...]:
    return (
        e.name,
        orjson.dumps(e.body),
        e.config_name,
        e.status,
        e.failure_reason,
        e.created,
        e.modified,
        _dump_optional(e.deployed),
        _dump_optional(e.pending),
    )


def _endpoint_from_row(row: tuple[Any, ...]) -> StoredEndpoint:
    return StoredEndpoint(
        name=row[0],
        body=orjson.loads(row[1]),
        config_name=row[2],
        status=row[3],
        failure_reason=row[4],
        created=row[5],
        modified=row[6],
        deployed=_load_optional(row[7]),
        pending=_load_optional(row[8]),
    )
