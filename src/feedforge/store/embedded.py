"""The embedded online store: one SQLite file, no server (the default backend).

Publishing runs in one process and serving in others (possibly several workers), so the store
is a file shared between processes, not an in-memory dict:

* ``kv(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID`` holds the versioned data under the
  same keys as Redis (:mod:`feedforge.store.keys`); the set of versions is stored as one
  row per member (:meth:`~feedforge.store.keys.Keys.version_member`).
* ``history(seq INTEGER PRIMARY KEY, key TEXT, item_id TEXT)`` holds live histories; ``key``
  is :meth:`~feedforge.store.keys.Keys.history`, ``seq`` orders the entries. A plain
  ``INTEGER PRIMARY KEY`` is enough: SQLite hands out ``max(seq) + 1`` and trimming only ever
  deletes the oldest rows, so ``seq`` keeps growing without ``AUTOINCREMENT``'s extra table.
* WAL mode: readers never block the writer nor each other, and a reader sees a consistent
  snapshot per call. Writers wait up to ``busy_timeout_s`` for each other instead of failing.
* One connection per thread (FastAPI runs sync endpoints in a threadpool), opened lazily.
* Bulk writes (``put_vectors``, ``put_records``, the bulk of ``delete_version``) commit every
  ``write_chunk`` rows, so a million-item publish never holds the write lock for seconds and a
  concurrent ``append_history`` only waits for one chunk. A version is invisible to readers
  until :meth:`EmbeddedStore.set_current`, so partial commits of a non-current version are
  harmless; every other write is a single transaction.
* Every sqlite3 error becomes :class:`~feedforge.errors.StoreUnavailableError` (cannot open,
  locked, I/O) or :class:`~feedforge.errors.StoreError` (anything else), naming the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.errors import StoreConflictError, StoreError, StoreUnavailableError, ValidationError
from feedforge.store.base import APPLIED_TOKEN_TTL_S, OnlineStore, decode_vectors
from feedforge.store.keys import Keys, decode_record, encode_record, encode_records, encode_vectors

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version``; a file with another non-zero version is refused."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    item_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_key_seq ON history (key, seq);
"""

_MAX_IN_VARIABLES = 10_000


def _upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``.

    With SQLite's default BINARY collation, ``key >= prefix AND key < _upper_bound(prefix)``
    is a prefix match that uses the primary-key index (``LIKE``/``GLOB`` would not reliably).
    """
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EmbeddedStore(OnlineStore):
    """An :class:`~feedforge.store.base.OnlineStore` in one SQLite file.

    Several instances, in one or several processes, may open the same file: a publish by one
    is seen by the others as soon as its ``set_current`` commits. Thread-safe.

    Args:
        path: The database file; its parent folder is created if needed.
        namespace: Key namespace (see :class:`~feedforge.store.keys.Keys`); several
            namespaces may share one file.
        busy_timeout_s: How long a write waits for another process's write to finish.
        write_chunk: Rows per transaction of bulk writes and deletes.

    Raises:
        StoreUnavailableError: the file cannot be opened or created.
        StoreError: the file is not a feedforge store of a known schema version.
    """

    def __init__(
        self,
        path: Path | str,
        namespace: str = "feedforge",
        *,
        busy_timeout_s: float = 10.0,
        write_chunk: int = 50_000,
    ) -> None:
        if write_chunk < 1:
            raise ValidationError(f"write_chunk must be >= 1, got {write_chunk}")
        self.keys = Keys(namespace)
        self.path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        self._write_chunk = write_chunk
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create the folder of the embedded store {self.path}: {exc}",
                path=str(self.path),
            ) from exc
        try:
            self._create_schema()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.path)!r}, namespace={self.keys.namespace!r})"

    def identity(self) -> str:
        return f"sqlite {self.path.resolve()} namespace={self.keys.namespace}"

    # -- connections and transactions ---------------------------------------------------------
    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(
                f"embedded store {self.path} is unavailable ({operation}): {exc}",
                path=str(self.path),
            ) from exc
        except sqlite3.Error as exc:
            raise StoreError(
                f"embedded store {self.path} failed {operation}: {exc}", path=str(self.path)
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every transaction is explicit below.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,  # only so close() may close it from another thread
        )
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL mode
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"embedded store {self.path} is closed", path=str(self.path))
        if os.getpid() != self._pid:
            # A forked child must not use its parent's connections; abandon (not close) them.
            with self._lock:
                self._pid = os.getpid()
                self._connections = []
                self._local = threading.local()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self, operation: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        with self._errors(operation):
            conn = self._conn()
            # IMMEDIATE takes the write lock up front, so a read-then-write transaction cannot
            # fail half-way with SQLITE_BUSY; a deferred read transaction is one snapshot.
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    # The original error is the one worth reporting.
                    with suppress(sqlite3.Error):
                        conn.rollback()
                raise

    def _create_schema(self) -> None:
        with self._errors("open"):
            self._enable_wal(self._conn())
        with self._transaction("open", write=True) as conn:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found not in (0, SCHEMA_VERSION):
                raise StoreError(
                    f"embedded store {self.path} has schema version {found}; this feedforge "
                    f"reads version {SCHEMA_VERSION}. Delete the file and publish again.",
                    path=str(self.path),
                )
            # Not executescript(): it would commit the transaction opened above.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (persistent: once per file). Changing the journal mode
        needs an exclusive lock and, unlike other statements, fails at once with "database
        is locked" instead of waiting on the busy timeout, so a store opened while another
        connection creates or writes the file retries for up to ``busy_timeout_s``."""
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _variable_chunk(self, conn: sqlite3.Connection) -> int:
        return min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), _MAX_IN_VARIABLES)

    def _get_many(self, operation: str, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        found: dict[str, bytes] = {}
        with self._transaction(operation, write=False) as conn:
            chunk = self._variable_chunk(conn)
            for start in range(0, len(keys), chunk):
                part = keys[start : start + chunk]
                marks = ",".join("?" * len(part))
                rows = conn.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", part)
                found.update(rows)
        return [found.get(key) for key in keys]

    def _put_many(self, operation: str, rows: Iterable[tuple[str, bytes]]) -> None:
        batch: list[tuple[str, bytes]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= self._write_chunk:
                self._upsert(operation, batch)
                batch = []
        if batch:
            self._upsert(operation, batch)

    def _upsert(self, operation: str, rows: list[tuple[str, bytes]]) -> None:
        with self._transaction(operation, write=True) as conn:
            conn.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", rows)

    def _get(self, conn: sqlite3.Connection, key: str) -> bytes | None:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    # -- versioned data -----------------------------------------------------------------------
    def put_vectors(self, version: str, kind: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        keys = self.keys.items(version, kind, ids)
        self._put_many("put_vectors", zip(keys, encode_vectors(ids, vectors), strict=True))

    def get_vectors(
        self, version: str, kind: str, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        return decode_vectors(self._get_many("get_vectors", self.keys.items(version, kind, ids)))

    def put_records(
        self, version: str, kind: str, ids: Sequence[str], records: Sequence[Mapping[str, Any]]
    ) -> None:
        keys = self.keys.items(version, kind, ids)
        self._put_many("put_records", zip(keys, encode_records(ids, records), strict=True))

    def get_records(
        self, version: str, kind: str, ids: Sequence[str]
    ) -> list[dict[str, Any] | None]:
        blobs = self._get_many("get_records", self.keys.items(version, kind, ids))
        return [None if blob is None else decode_record(blob) for blob in blobs]

    def put_meta(self, version: str, meta: Mapping[str, Any]) -> None:
        rows = [
            (self.keys.meta(version), encode_record(meta)),
            (self.keys.version_member(version), b""),
        ]
        self._upsert("put_meta", rows)

    def get_meta(self, version: str) -> dict[str, Any] | None:
        key = self.keys.meta(version)
        with self._errors("get_meta"):
            blob = self._get(self._conn(), key)
        return None if blob is None else decode_record(blob)

    def set_current(self, version: str) -> None:
        meta_key = self.keys.meta(version)
        with self._transaction("set_current", write=True) as conn:
            if self._get(conn, meta_key) is None:
                raise StoreError(
                    f"cannot make version {version!r} current: it has no metadata in "
                    f"{self.path} (write everything, then put_meta, then set_current)",
                    version=version,
                )
            conn.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                (self.keys.current(), version.encode("utf-8")),
            )

    def current_version(self) -> str | None:
        with self._errors("current_version"):
            blob = self._get(self._conn(), self.keys.current())
        return None if blob is None else blob.decode("utf-8")

    def versions(self) -> list[str]:
        prefix = self.keys.version_member_prefix()
        with self._errors("versions"):
            rows = self._conn().execute(
                "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, _upper_bound(prefix)),
            )
            return [key[len(prefix) :] for (key,) in rows]

    def delete_version(self, version: str) -> None:
        prefix = self.keys.version_prefix(version)
        # First unpublish atomically (afterwards set_current refuses the version), then delete
        # the bulk in chunks so other writers are not locked out for the whole deletion.
        with self._transaction("delete_version", write=True) as conn:
            current = self._get(conn, self.keys.current())
            if current is not None and current.decode("utf-8") == version:
                raise StoreError(
                    f"refusing to delete version {version!r}: it is the current version",
                    version=version,
                )
            conn.execute(
                "DELETE FROM kv WHERE key IN (?, ?)",
                (self.keys.meta(version), self.keys.version_member(version)),
            )
        while True:
            with self._transaction("delete_version", write=True) as conn:
                deleted = conn.execute(
                    "DELETE FROM kv WHERE key IN "
                    "(SELECT key FROM kv WHERE key >= ? AND key < ? LIMIT ?)",
                    (prefix, _upper_bound(prefix), self._write_chunk),
                ).rowcount
            if deleted < self._write_chunk:
                return

    # -- live per-user state ------------------------------------------------------------------
    def append_histories(
        self, items: Mapping[str, Sequence[str]], max_len: int, token: str | None = None
    ) -> None:
        if max_len < 1:
            raise ValidationError(f"max_len must be >= 1, got {max_len}")
        items = {user_id: ids for user_id, ids in items.items() if ids}
        if not items:
            return
        with self._transaction("append_histories", write=True) as conn:
            if token is not None and not self._first_use(conn, token):
                return
            for user_id, item_ids in items.items():
                key = self.keys.history(user_id)
                conn.executemany(
                    "INSERT INTO history (key, item_id) VALUES (?, ?)",
                    [(key, item_id) for item_id in item_ids],
                )
                conn.execute(
                    "DELETE FROM history WHERE key = ? AND seq <= "
                    "(SELECT seq FROM history WHERE key = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (key, key, max_len),
                )

    def _first_use(self, conn: sqlite3.Connection, token: str) -> bool:
        """Record ``token`` (in the caller's transaction); False when it was already there.
        Tokens older than :data:`APPLIED_TOKEN_TTL_S` are forgotten (they are few: one per
        replayed write)."""
        now = time.time()
        prefix = self.keys.applied_prefix()
        conn.execute(
            "DELETE FROM kv WHERE key >= ? AND key < ? AND CAST(value AS REAL) < ?",
            (prefix, _upper_bound(prefix), now - APPLIED_TOKEN_TTL_S),
        )
        added = conn.execute(
            "INSERT OR IGNORE INTO kv (key, value) VALUES (?, ?)",
            (self.keys.applied(token), str(now).encode()),
        ).rowcount
        return bool(added)

    def get_histories(self, user_ids: Sequence[str], n: int) -> list[list[str]]:
        if n <= 0 or not user_ids:
            return [[] for _ in user_ids]
        with self._transaction("get_histories", write=False) as conn:
            return [
                [
                    item_id
                    for (item_id,) in conn.execute(
                        "SELECT item_id FROM history WHERE key = ? ORDER BY seq DESC LIMIT ?",
                        (self.keys.history(user_id), n),
                    )
                ]
                for user_id in user_ids
            ]

    def clear_histories(self) -> None:
        prefix = self.keys.history_prefix()
        with self._transaction("clear_histories", write=True) as conn:
            conn.execute(
                "DELETE FROM history WHERE key >= ? AND key < ?", (prefix, _upper_bound(prefix))
            )

    # -- counters -----------------------------------------------------------------------------
    def add_counts(self, version: str, name: str, counts: Mapping[str, int]) -> bool:
        key = self.keys.counts(version, name)
        nonzero = {field: int(n) for field, n in counts.items() if n}
        # One write transaction (SQLite serialises writers): check, read, add, write back.
        with self._transaction("add_counts", write=True) as conn:
            if self._get(conn, self.keys.meta(version)) is None:
                return False  # a deleted version's counters are never created again
            if not nonzero:
                return True
            blob = self._get(conn, key)
            total: dict[str, int] = {} if blob is None else decode_record(blob)
            for field, n in nonzero.items():
                total[field] = total.get(field, 0) + n
            conn.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, encode_record(total))
            )
        return True

    def get_counts(self, version: str, name: str) -> dict[str, int]:
        with self._errors("get_counts"):
            blob = self._get(self._conn(), self.keys.counts(version, name))
        return {} if blob is None else {k: int(v) for k, v in decode_record(blob).items()}

    def counts_names(self, version: str) -> list[str]:
        prefix = self.keys.counts_prefix(version)
        with self._errors("counts_names"):
            rows = self._conn().execute(
                "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, _upper_bound(prefix)),
            )
            return [key[len(prefix) :] for (key,) in rows]

    # -- documents ----------------------------------------------------------------------------
    def get_document(self, name: str) -> tuple[int, dict[str, Any] | None]:
        key = self.keys.document(name)
        with self._errors("get_document"):
            blob = self._get(self._conn(), key)
        if blob is None:
            return 0, None
        stored = decode_record(blob)
        return int(stored["rev"]), dict(stored["body"])

    def put_document(self, name: str, document: Mapping[str, Any], expected_revision: int) -> int:
        key = self.keys.document(name)
        with self._transaction("put_document", write=True) as conn:
            blob = self._get(conn, key)
            rev = 0 if blob is None else int(decode_record(blob)["rev"])
            if rev != expected_revision:
                raise StoreConflictError(
                    f"document {name!r} in {self.path} changed since revision "
                    f"{expected_revision}; read it again",
                    document=name,
                )
            value = encode_record({"rev": rev + 1, "body": dict(document)})
            conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))
        return rev + 1

    # -- lifecycle ----------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT count(*) FROM kv WHERE key = ?", (self.keys.current(),))
        except Exception:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            with suppress(sqlite3.Error):  # best effort: the file stays consistent anyway
                conn.close()
