"""SQLite persistence of models, endpoint configs and endpoints (the embedded default).

Every write is one transaction, committed before the API answers, so a router killed at any
instant restarts from the last acknowledged state. The router runs every call on its event-loop
thread without awaiting in between a check and its write, so concurrent API calls are
serialized and cannot interleave inside an operation. WAL mode keeps readers (another process
inspecting the file) from blocking the router.

An endpoint row keeps a snapshot of what it serves (its endpoint config and models as request
bodies): SageMaker lets users delete a model or config that an endpoint uses, and the endpoint
must still come back after a restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

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
"""


@dataclass(frozen=True, slots=True)
class StoredResource:
    name: str
    body: dict[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class StoredEndpoint:
    name: str
    body: dict[str, Any]
    config_name: str
    status: str
    failure_reason: str | None
    created: float
    modified: float
    #: ``{"config": <CreateEndpointConfig body>, "models": {name: <CreateModel body>}}``
    deployed: dict[str, Any] | None
    #: the same for an update in progress
    pending: dict[str, Any] | None


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

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

    # models and endpoint configs share one shape
    def put_resource(self, table: str, name: str, body: dict[str, Any]) -> StoredResource:
        created = time.time()
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO {_table(table)} (name, body, created) VALUES (?, ?, ?)",
                (name, orjson.dumps(body), created),
            )
        return StoredResource(name, body, created)

    def get_resource(self, table: str, name: str) -> StoredResource | None:
        row = self._db.execute(
            f"SELECT name, body, created FROM {_table(table)} WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else StoredResource(row[0], orjson.loads(row[1]), row[2])

    def list_resources(self, table: str) -> list[StoredResource]:
        rows = self._db.execute(f"SELECT name, body, created FROM {_table(table)}").fetchall()
        return [StoredResource(r[0], orjson.loads(r[1]), r[2]) for r in rows]

    def delete_resource(self, table: str, name: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute(f"DELETE FROM {_table(table)} WHERE name = ?", (name,))
        return cursor.rowcount > 0

    # endpoints
    def put_endpoint(self, endpoint: StoredEndpoint) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO endpoints (name, body, config_name, status, failure_reason, "
                "created, modified, deployed, pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _endpoint_row(endpoint),
            )

    def update_endpoint(self, name: str, **changes: Any) -> StoredEndpoint:
        """Change columns of one endpoint; ``modified`` is set to now unless given."""
        changes.setdefault("modified", time.time())
        columns = []
        values: list[Any] = []
        for column, value in changes.items():
            if column not in _ENDPOINT_COLUMNS:
                raise KeyError(column)
            columns.append(f"{column} = ?")
            values.append(
                orjson.dumps(value)
                if column in ("body", "deployed", "pending") and value is not None
                else value
            )
        with self.transaction() as db:
            db.execute(f"UPDATE endpoints SET {', '.join(columns)} WHERE name = ?",
                       (*values, name))
        found = self.get_endpoint(name)
        if found is None:
            raise KeyError(name)
        return found

    def get_endpoint(self, name: str) -> StoredEndpoint | None:
        row = self._db.execute(
            f"SELECT {', '.join(_ENDPOINT_COLUMNS)} FROM endpoints WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else _endpoint_from_row(row)

    def list_endpoints(self) -> list[StoredEndpoint]:
        rows = self._db.execute(f"SELECT {', '.join(_ENDPOINT_COLUMNS)} FROM endpoints").fetchall()
        return [_endpoint_from_row(r) for r in rows]

    def delete_endpoint(self, name: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        return cursor.rowcount > 0


_TABLES = {"models": "models", "endpoint_configs": "endpoint_configs"}
_ENDPOINT_COLUMNS = (
    "name", "body", "config_name", "status", "failure_reason", "created", "modified",
    "deployed", "pending",
)  # fmt: skip


def _table(table: str) -> str:
    # Table names cannot be bound parameters; only these two are ever interpolated.
    return _TABLES[table]


def _endpoint_row(e: StoredEndpoint) -> tuple[Any, ...]:
    return (
        e.name,
        orjson.dumps(e.body),
        e.config_name,
        e.status,
        e.failure_reason,
        e.created,
        e.modified,
        None if e.deployed is None else orjson.dumps(e.deployed),
        None if e.pending is None else orjson.dumps(e.pending),
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
        deployed=None if row[7] is None else orjson.loads(row[7]),
        pending=None if row[8] is None else orjson.loads(row[8]),
    )
