"""The Redis Cluster online store (``store.type: redis-cluster``): the Redis store on
redis-py's cluster client, with hash-tagged keys.

What changes from :mod:`feedforge.store.redis`:

* Keys are hash-tagged (:class:`~feedforge.store.keys.Keys` with ``cluster=True``): the
  control keys (pointer, version set, each version's metadata and counters) share one slot,
  so the pointer flip, unpublish and counter scripts still check and act atomically; a
  user's records and history share the user's slot, so a feed request
  (:meth:`~feedforge.store.redis.RedisStore.read_user`) touches at most two nodes: the
  pointer's and the user's, each one round trip of the pipeline; items spread over every
  node.
* Bulk reads and writes of items go through ``MGET``/``MSET`` split by slot
  (``mget_nonatomic``/``mset_nonatomic``: one pipeline per node); a version is still
  invisible until its pointer flips, so they need not be atomic.
* A batch of history appends is split by slot, one server-side call per slot; a tokened
  write marks each call applied with a token key in that call's slot.
* Deleting a version or the histories scans every master.
* The client reads the slot map when the store is opened, so opening one while no node
  answers raises :class:`~feedforge.errors.StoreUnavailableError` (the single-Redis store
  connects lazily). After a failover, redis-py follows the ``MOVED`` redirections to the
  promoted replica.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.retry import Retry

from feedforge.errors import StoreUnavailableError, ValidationError
from feedforge.store.base import APPLIED_TOKEN_TTL_S
from feedforge.store.keys import encode_record, glob_pattern
from feedforge.store.redis import (
    CHUNK,
    HISTORY_CHUNK,
    RedisStore,
    _optional_bytes,
    redact_url,
)

_FAILING_OVER = (
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN: a slot has no master (yet)
    redis.exceptions.TryAgainError,  # TRYAGAIN: a slot moves
    redis.exceptions.MasterDownError,  # MASTERDOWN: a replica lost its master
    redis.exceptions.SlotNotCoveredError,  # the client's slot map has a hole
)
"""Cluster answers that mean "not now", not "wrong command"."""

# KEYS: meta, versions (one slot). ARGV: version, metadata. The metadata and the version set
# change together (a transaction of the single-Redis store).
_PUT_META = """
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""


class RedisClusterStore(RedisStore):
    """An :class:`~feedforge.store.base.OnlineStore` on a Redis Cluster (see the module
    docs). Thread-safe, like :class:`~feedforge.store.redis.RedisStore`."""

    def __init__(
        self,
        client: RedisCluster,
        namespace: str = "feedforge",
        url: str = "",
        history_ttl_s: float | None = None,
        read_client: RedisCluster | None = None,
    ) -> None:
        super().__init__(client, namespace, url, history_ttl_s, read_client, cluster=True)  # type: ignore[arg-type]
        self._cluster = client
        self._put_meta = client.register_script(_PUT_META)

    RETRIES = 3  # a failover takes a node timeout: the main client tries a little longer
    CLIENT = RedisCluster
    KIND = "redis-cluster"

    @classmethod
    def _connect(cls, url: str, timeout_s: float, retry: Retry) -> Any:
        """A cluster client; it reads the slot map now, so a cluster with no node answering
        is a :class:`~feedforge.errors.StoreUnavailableError` when the store is opened."""
        try:
            return super()._connect(url, timeout_s, retry)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            safe = redact_url(url)
            raise StoreUnavailableError(
                f"Redis Cluster at {safe} is unavailable (reading its slots): {exc}", url=safe
            ) from exc

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """As the single-Redis store's, and what a cluster answers while a master fails over
        (or has no replica left) is an outage too, so the service degrades through it."""
        try:
            with super()._errors(operation):
                try:
                    yield
                except _FAILING_OVER as exc:
                    raise StoreUnavailableError(
                        f"Redis Cluster at {self.url} is unavailable ({operation}): {exc}",
                        url=self.url,
                    ) from exc
        except redis.exceptions.RedisClusterException as exc:  # not a RedisError
            raise StoreUnavailableError(
                f"Redis Cluster at {self.url} is unavailable ({operation}): {exc}", url=self.url
            ) from exc

    # -- helpers ------------------------------------------------------------------------------
    def _mget(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(keys), CHUNK):
            blobs = self._cluster.mget_nonatomic(keys[start : start + CHUNK])
            out += [_optional_bytes(blob) for blob in blobs]
        return out

    def _mset(self, keys: list[str], values: list[bytes]) -> None:
        for start in range(0, len(keys), CHUNK):
            chunk = dict(
                zip(keys[start : start + CHUNK], values[start : start + CHUNK], strict=True)
            )
            self._cluster.mset_nonatomic(chunk)

    def _unlink_matching(self, prefix: str) -> None:
        batch: list[bytes] = []

        def unlink() -> None:
            pipe = self._cluster.pipeline(transaction=False)
            for key in batch:
                pipe.unlink(key)
            pipe.execute()
            batch.clear()

        for key in self._cluster.scan_iter(match=glob_pattern(prefix), count=CHUNK):
            batch.append(key)
            if len(batch) >= CHUNK:
                unlink()
        if batch:
            unlink()

    # -- versioned data -----------------------------------------------------------------------
    def put_meta(self, version: str, meta: Mapping[str, Any]) -> None:
        blob = encode_record(meta)
        with self._errors("put_meta"):
            self._put_meta(
                keys=[self.keys.meta(version), self.keys.versions()], args=[version, blob]
            )

    # -- live per-user state ------------------------------------------------------------------
    def append_histories(
        self, items: Mapping[str, Sequence[str]], max_len: int, token: str | None = None
    ) -> None:
        if max_len < 1:
            raise ValidationError(f"max_len must be >= 1, got {max_len}")
        ttl = 0 if self.history_ttl_s is None else max(1, int(self.history_ttl_s))
        token_ttl = 0 if token is None else APPLIED_TOKEN_TTL_S
        by_slot: dict[int, list[tuple[str, Sequence[str]]]] = {}
        for user_id, item_ids in items.items():
            if item_ids:
                key = self.keys.history(user_id)
                by_slot.setdefault(self._cluster.keyslot(key), []).append((key, item_ids))
        with self._errors("append_histories"):
            for slot, entries in sorted(by_slot.items()):
                calls = 0
                keys: list[str] = []
                args: list[str | int] = []
                for key, item_ids in entries:
                    keys.append(key)
                    args += [len(item_ids), *item_ids]
                    if len(args) >= HISTORY_CHUNK:
                        self._append_slot(keys, args, max_len, ttl, token, token_ttl, slot, calls)
                        calls += 1
                        keys, args = [], []
                if keys:
                    self._append_slot(keys, args, max_len, ttl, token, token_ttl, slot, calls)

    def _append_slot(
        self,
        keys: list[str],
        args: list[str | int],
        max_len: int,
        ttl: int,
        token: str | None,
        token_ttl: int,
        slot: int,
        call: int,
    ) -> None:
        """One server-side append of histories that share ``slot``; with a token, applied at
        most once (the token key carries the first history key's tag, hence its slot)."""
        if token is not None:
            tag = keys[0][keys[0].index("{") :]  # "{user_id}" (the first user's hash tag)
            plain = token.replace("{", "(").replace("}", ")")  # no brace before the tag
            keys = [self.keys.applied(f"{plain}:{slot}:{call}:{tag}"), *keys]
        self._append_histories(keys=keys, args=[max_len, ttl, token_ttl, *args])
