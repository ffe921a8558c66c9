"""The Redis online store (the production backend).

Design:

* Keys come from :mod:`feedforge.store.keys`; values are float32 bytes (vectors) and JSON
  (records, metadata). A user's live history is a bounded list (``RPUSH`` + ``LTRIM``) that
  expires ``store.history_ttl_days`` after the user's last event; version keys carry no TTL
  (publish deletes replaced versions after their grace period). The client uses
  ``decode_responses=False`` and hiredis when installed.
* A feed request's read (:meth:`RedisStore.read_user`) has a client of its own, whose socket
  and connect timeouts are the request's store deadline (``store.read_timeout_ms``, tens of
  milliseconds) with no retry: a hung server costs a feed one deadline, then the service's
  breaker answers degraded. Every other call (publishes, history writes, health) uses the
  main client (``store.socket_timeout_s``, one retry). Socket timeouts count time waiting
  on the server only, so a busy interpreter (the GIL held by a background load) never makes
  a healthy server miss the deadline, as a wall-clock timer around the call would.
* Reads are one round trip per call: one ``MGET`` (or, above :data:`CHUNK` keys, one
  non-transactional pipeline of ``MGET`` s).
* Bulk writes go through non-transactional pipelines of ``MSET`` s, :data:`CHUNK` keys per
  round trip, so publishing a million items neither builds one giant command nor blocks the
  server. They are not atomic, and need not be: a version is invisible until
  :meth:`RedisStore.set_current` flips the pointer.
* ``set_current`` and the first step of ``delete_version`` are small Lua scripts, so "the
  version has metadata" / "the version is not current" is checked and acted on atomically.
* Every connection or timeout failure becomes
  :class:`~feedforge.errors.StoreUnavailableError` naming the URL (password removed); any
  other Redis error becomes :class:`~feedforge.errors.StoreError`. No raw redis exception
  leaves this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Self

import numpy as np
import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from feedforge.errors import (
    ConfigError,
    StoreConflictError,
    StoreError,
    StoreUnavailableError,
    ValidationError,
    redact_url,
)
from feedforge.store.base import APPLIED_TOKEN_TTL_S, OnlineStore, UserRead, decode_vectors
from feedforge.store.keys import (
    Keys,
    decode_record,
    encode_record,
    encode_records,
    encode_vectors,
    glob_pattern,
)

CHUNK = 10_000
"""Keys per ``MGET``/``MSET`` and per pipeline round trip of bulk writes and deletes."""

# KEYS: meta, current. ARGV: version. Sets the pointer only if the metadata exists.
_SET_CURRENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

# KEYS: document. ARGV: expected revision, body. Compare-and-set of a revisioned document
# (a hash of rev and body); returns the new revision, or -1 when the revision moved on.
_PUT_DOCUMENT = """
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'rev', rev + 1, 'body', ARGV[2])
return rev + 1
"""

# KEYS: meta, counts. ARGV: field, n, field, n, ... Adds to a version's counters only while
# its metadata exists (a deleted version's counters are never created again); 1 if added.
_ADD_COUNTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

# KEYS: current, versions, meta. ARGV: version. Unpublishes a version unless it is current;
# afterwards set_current refuses it, so the bulk delete that follows cannot race a flip.
_UNPUBLISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""


def _bytes(value: object) -> bytes:
    # The client is made with decode_responses=False, so every reply is bytes; redis-py's
    # annotations still say bytes | str, hence the check.
    if not isinstance(value, bytes):
        raise StoreError(f"unexpected Redis reply of type {type(value).__name__}")
    return value


def _optional_bytes(value: object) -> bytes | None:
    return None if value is None else _bytes(value)


# KEYS: the token key (when ARGV[3] > 0), then one history key per user. ARGV: max_len,
# ttl_s (0: none), token_ttl_s (0: no token), then per key the number of its items followed by
# the items (oldest first). Appends, trims and sets the TTL of every key in one server-side
# call: as a pipeline, the three commands per user cost 16 us each in redis-py, 49 ms per
# 1,000 users. With a token, a call whose token key exists does nothing (it was applied).
# (The Redis Cluster backend splits the call by slot.)
_APPEND_HISTORIES = """
local max_len = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local token_ttl = tonumber(ARGV[3])
local first = 1
if token_ttl > 0 then
  if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', token_ttl) then return 0 end
  first = 2
end
local pos = 4
for i = first, #KEYS do
  local key = KEYS[i]
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  local last = pos + n - 1
  while pos <= last do
    local stop = math.min(pos + 999, last)
    redis.call('RPUSH', key, unpack(ARGV, pos, stop))
    pos = stop + 1
  end
  redis.call('LTRIM', key, -max_len, -1)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
return #KEYS
"""
HISTORY_CHUNK = 10_000
"""History items per server-side append call (:meth:`RedisStore.append_histories`)."""


class RedisStore(OnlineStore):
    """An :class:`~feedforge.store.base.OnlineStore` on a Redis server.

    Thread-safe: the redis-py client keeps a connection pool, so one instance can be shared by
    every thread of a server (create it once, in the app's lifespan).

    Args:
        client: A redis-py client created with ``decode_responses=False``.
        namespace: Key namespace (see :class:`~feedforge.store.keys.Keys`).
        url: The server's URL, used in error messages (redacted here).
        history_ttl_s: A user's live history expires this long after their last event
            (None: never).
        read_client: The client of feed reads (:meth:`read_user`), normally one with a short
            timeout and no retry (:meth:`from_url`); None uses ``client``.
        cluster: The clients are Redis Cluster clients: the keys are hash-tagged
            (:class:`~feedforge.store.redis_cluster.RedisClusterStore`).
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "feedforge",
        url: str = "",
        history_ttl_s: float | None = None,
        read_client: redis.Redis | None = None,
        cluster: bool = False,
    ) -> None:
        for each in (client, read_client):
            if each is not None and each.get_connection_kwargs().get("decode_responses"):
                raise ValidationError("RedisStore needs clients with decode_responses=False")
        self.keys = Keys(namespace, cluster=cluster)
        self.url = redact_url(url) if url else repr(client)
        self._client = client
        self._read_client = client if read_client is None else read_client
        # A user's live history expires this long after their last event (None: never).
        self.history_ttl_s = history_ttl_s
        self._set_current = client.register_script(_SET_CURRENT)
        self._unpublish = client.register_script(_UNPUBLISH)
        self._append_histories = client.register_script(_APPEND_HISTORIES)
        self._put_document = client.register_script(_PUT_DOCUMENT)
        self._add_counts = client.register_script(_ADD_COUNTS)

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str = "feedforge",
        socket_timeout_s: float = 0.5,
        history_ttl_s: float | None = None,
        read_timeout_s: float = 0.025,
    ) -> Self:
        """Create a store for ``url`` (e.g. ``redis://127.0.0.1:6379/0``); connects lazily.

        A failed command is retried once after a short backoff, so an unreachable server
        costs about two connect timeouts, not redis-py's default of ten retries. Feed reads
        use a second connection pool, with timeout ``read_timeout_s`` and no retry.

        Raises:
            ConfigError: ``url`` is not a Redis URL.
        """
        try:
            retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=cls.RETRIES)
            client = cls._connect(url, socket_timeout_s, retry)
            read_client = cls._connect(url, read_timeout_s, Retry(NoBackoff(), retries=0))
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from exc
        return cls(client, namespace, url=url, history_ttl_s=history_ttl_s, read_client=read_client)

    RETRIES = 1
    """Retries of a failed command by the main client (feed reads: none)."""
    CLIENT: Any = redis.Redis
    """The redis-py client class (:class:`redis.cluster.RedisCluster` for a cluster)."""
    KIND = "redis"
    """The backend's name in :meth:`identity` (``store.type``)."""

    @classmethod
    def _connect(cls, url: str, timeout_s: float, retry: Retry) -> Any:
        """A client of ``url`` with ``timeout_s`` socket and connect timeouts."""
        return cls.CLIENT.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=retry,
            decode_responses=False,
        )

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client."""
        return self._client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, namespace={self.keys.namespace!r})"

    def identity(self) -> str:
        # The URL without its password; the namespace separates deployments of one database.
        return f"{self.KIND} {self.url} namespace={self.keys.namespace}"

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailableError(
                f"Redis at {self.url} is unavailable ({operation}): {exc}", url=self.url
            ) from exc
        except redis.exceptions.RedisError as exc:
            raise StoreError(
                f"Redis at {self.url} failed {operation}: {exc}", url=self.url
            ) from exc

    # -- helpers ------------------------------------------------------------------------------
    def _mget(self, keys: list[str]) -> list[bytes | None]:
        if len(keys) <= CHUNK:
            return [_optional_bytes(blob) for blob in self._client.mget(keys)] if keys else []
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), CHUNK):
            pipe.mget(keys[start : start + CHUNK])
        return [_optional_bytes(blob) for chunk in pipe.execute() for blob in chunk]

    def _mset(self, keys: list[str], values: list[bytes]) -> None:
        for start in range(0, len(keys), CHUNK):
            pipe = self._client.pipeline(transaction=False)
            pipe.mset(
                dict(zip(keys[start : start + CHUNK], values[start : start + CHUNK], strict=True))
            )
            pipe.execute()

    def _unlink_matching(self, prefix: str) -> None:
        batch: list[bytes] = []
        for key in self._client.scan_iter(match=glob_pattern(prefix), count=CHUNK):
            batch.append(key)
            if len(batch) >= CHUNK:
                self._client.unlink(*batch)
                batch.clear()
        if batch:
            self._client.unlink(*batch)

    # -- versioned data -----------------------------------------------------------------------
    def put_vectors(self, version: str, kind: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        keys = self.keys.items(version, kind, ids)
        blobs = encode_vectors(ids, vectors)
        with self._errors("put_vectors"):
            self._mset(keys, blobs)

    def get_vectors(
        self, version: str, kind: str, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        keys = self.keys.items(version, kind, ids)
        with self._errors("get_vectors"):
            blobs = self._mget(keys)
        return decode_vectors(blobs)

    def put_records(
        self, version: str, kind: str, ids: Sequence[str], records: Sequence[Mapping[str, Any]]
    ) -> None:
        keys = self.keys.items(version, kind, ids)
        blobs = encode_records(ids, records)
        with self._errors("put_records"):
            self._mset(keys, blobs)

    def get_records(
        self, version: str, kind: str, ids: Sequence[str]
    ) -> list[dict[str, Any] | None]:
        keys = self.keys.items(version, kind, ids)
        with self._errors("get_records"):
            blobs = self._mget(keys)
        return [None if blob is None else decode_record(blob) for blob in blobs]

    def read_user(
        self,
        version: str,
        user_id: str,
        n_history: int,
        *,
        vector_kind: str,
        record_kind: str,
        extra_kind: str | None = None,
    ) -> UserRead:
        with self._errors("read_user"):
            pipe = self._read_client.pipeline(transaction=False)
            pipe.get(self.keys.current())
            pipe.get(self.keys.item(version, vector_kind, user_id))
            pipe.get(self.keys.item(version, record_kind, user_id))
            if n_history > 0:
                pipe.lrange(self.keys.history(user_id), -n_history, -1)
            if extra_kind is not None:
                pipe.get(self.keys.item(version, extra_kind, user_id))
            answers = pipe.execute()
        current, vector, record = (_optional_bytes(a) for a in answers[:3])
        history = answers[3] if n_history > 0 else []
        extra = _optional_bytes(answers[-1]) if extra_kind is not None else None
        return UserRead(
            current=None if current is None else current.decode("utf-8"),
            vector=None if vector is None else decode_vectors([vector])[0][0],
            record=None if record is None else decode_record(record),
            history=[_bytes(item).decode("utf-8") for item in reversed(history)],
            extra=None if extra is None else decode_record(extra),
        )

    def put_meta(self, version: str, meta: Mapping[str, Any]) -> None:
        blob = encode_record(meta)
        with self._errors("put_meta"):
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self.keys.meta(version), blob)
            pipe.zadd(self.keys.versions(), {version: 0})
            pipe.execute()

    def get_meta(self, version: str) -> dict[str, Any] | None:
        with self._errors("get_meta"):
            blob = self._client.get(self.keys.meta(version))
        return None if blob is None else decode_record(_bytes(blob))

    def set_current(self, version: str) -> None:
        meta_key = self.keys.meta(version)
        with self._errors("set_current"):
            done = self._set_current(keys=[meta_key, self.keys.current()], args=[version])
        if not done:
            raise StoreError(
                f"cannot make version {version!r} current: it has no metadata in {self.url} "
                "(write everything, then put_meta, then set_current)",
                version=version,
            )

    def current_version(self) -> str | None:
        with self._errors("current_version"):
            value = self._client.get(self.keys.current())
        return None if value is None else _bytes(value).decode("utf-8")

    def versions(self) -> list[str]:
        # Every member has score 0, so ZRANGE returns them in byte order: oldest first.
        with self._errors("versions"):
            members = self._client.zrange(self.keys.versions(), 0, -1)
        return [_bytes(member).decode("utf-8") for member in members]

    def delete_version(self, version: str) -> None:
        keys = [self.keys.current(), self.keys.versions(), self.keys.meta(version)]
        with self._errors("delete_version"):
            if not self._unpublish(keys=keys, args=[version]):
                raise StoreError(
                    f"refusing to delete version {version!r}: it is the current version",
                    version=version,
                )
            self._unlink_matching(self.keys.version_prefix(version))

    # -- live per-user state ------------------------------------------------------------------
    def append_histories(
        self, items: Mapping[str, Sequence[str]], max_len: int, token: str | None = None
    ) -> None:
        if max_len < 1:
            raise ValidationError(f"max_len must be >= 1, got {max_len}")
        ttl = 0 if self.history_ttl_s is None else max(1, int(self.history_ttl_s))
        token_ttl = 0 if token is None else APPLIED_TOKEN_TTL_S
        calls = 0

        def start() -> tuple[list[str], list[str | int]]:
            # Each server-side call of a tokened write is applied at most once on its own.
            keys = [] if token is None else [self.keys.applied(f"{token}:{calls}")]
            return keys, [max_len, ttl, token_ttl]

        keys, args = start()
        with self._errors("append_histories"):
            for user_id, item_ids in items.items():
                if not item_ids:
                    continue
                keys.append(self.keys.history(user_id))
                args += [len(item_ids), *item_ids]
                if len(args) >= HISTORY_CHUNK:
                    self._append_histories(keys=keys, args=args)
                    calls += 1
                    keys, args = start()
            if len(args) > 3:
                self._append_histories(keys=keys, args=args)

    def get_histories(self, user_ids: Sequence[str], n: int) -> list[list[str]]:
        if n <= 0 or not user_ids:
            return [[] for _ in user_ids]
        with self._errors("get_histories"):
            pipe = self._client.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.lrange(self.keys.history(user_id), -n, -1)
            lists = pipe.execute()
        return [[_bytes(item).decode("utf-8") for item in reversed(items)] for items in lists]

    def clear_histories(self) -> None:
        with self._errors("clear_histories"):
            self._unlink_matching(self.keys.history_prefix())

    # -- counters -----------------------------------------------------------------------------
    def add_counts(self, version: str, name: str, counts: Mapping[str, int]) -> bool:
        key = self.keys.counts(version, name)
        args: list[str | int] = []
        for field, n in counts.items():
            if n:
                args += [field, int(n)]
        with self._errors("add_counts"):  # one script: all or none
            return bool(self._add_counts(keys=[self.keys.meta(version), key], args=args))

    def get_counts(self, version: str, name: str) -> dict[str, int]:
        with self._errors("get_counts"):
            stored = self._client.hgetall(self.keys.counts(version, name))
        return {_bytes(field).decode("utf-8"): int(n) for field, n in stored.items()}

    def counts_names(self, version: str) -> list[str]:
        prefix = self.keys.counts_prefix(version)
        with self._errors("counts_names"):
            keys = list(self._client.scan_iter(match=glob_pattern(prefix), count=CHUNK))
        return sorted(_bytes(key).decode("utf-8")[len(prefix) :] for key in keys)

    # -- documents ----------------------------------------------------------------------------
    def get_document(self, name: str) -> tuple[int, dict[str, Any] | None]:
        with self._errors("get_document"):
            rev, body = self._client.hmget(self.keys.document(name), ["rev", "body"])
        if body is None:
            return 0, None
        return int(_bytes(rev)), decode_record(_bytes(body))

    def put_document(self, name: str, document: Mapping[str, Any], expected_revision: int) -> int:
        key = self.keys.document(name)
        with self._errors("put_document"):
            rev = int(
                self._put_document(keys=[key], args=[expected_revision, encode_record(document)])
            )
        if rev < 0:
            raise StoreConflictError(
                f"document {name!r} in {self.url} changed since revision {expected_revision}; "
                "read it again",
                document=name,
            )
        return rev

    # -- lifecycle ----------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        with self._errors("close"):
            self._client.close()
            if self._read_client is not self._client:
                self._read_client.close()
