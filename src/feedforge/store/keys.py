"""The online-store key layout and value encoding, shared by every backend.

This is the one place that knows how keys are spelled. Both backends (the embedded SQLite
store and Redis) store the same keys, so a store can be inspected with the same vocabulary
whatever the backend::

    ff:{ns}:current                       -> the current version id (utf-8)
    ff:{ns}:versions                      -> Redis: sorted set of versions that have metadata
    ff:{ns}:versions:{version}            -> embedded: one row per member of that set
    ff:{ns}:v:{version}:meta              -> the version's metadata (JSON)
    ff:{ns}:v:{version}:{kind}:{id}       -> one vector (float32 bytes) or record (JSON)
    ff:{ns}:v:{version}:counts:{name}     -> exact counters of the version (e.g. its serving
                                             profile): Redis: a hash of integers;
                                             embedded: a JSON object of integers
    ff:{ns}:hist:{user_id}                -> Redis: the user's recent history (a list)
                                             embedded: the ``key`` column of the history table
    ff:{ns}:applied:{token}               -> a history write done at most once (expires)

**Redis Cluster** (``Keys(namespace, cluster=True)``): the same names with hash tags, so the
keys one operation touches share a slot. The control keys (``current``, ``versions``, each
version's ``meta`` and ``counts``) end with ``:{ns}`` (one slot: the pointer flip, unpublish
and counter scripts check and act atomically there); a user's keys (``user_emb``,
``user_feat``, ``feed`` records and the history) end with ``{user_id}``, so a feed request
reads the user's data from one node and the pointer from one more (two round trips at most,
run in parallel by the pipeline); item keys carry no tag and spread over every node::

    ff:{ns}:current:{ns}   ff:{ns}:v:{version}:meta:{ns}   ff:{ns}:v:{version}:counts:{ns}:{name}
    ff:{ns}:v:{version}:user_emb:{user_id}   ff:{ns}:hist:{user_id}   (braces literal)

Every key of a version starts with :meth:`Keys.version_prefix`, which ends with ``:``, so
deleting version ``v1`` can never touch version ``v10``. Namespaces, versions and kinds are
restricted to ``[A-Za-z0-9_.-]`` so they can never contain the ``:`` separator or a glob
character; ids and user ids may be any string because they are always the last segment.

Values: a vector is its compact little-endian float32 bytes
(:func:`feedforge.store.base.encode_vector`, batched by :func:`encode_vectors`); records and
metadata are compact UTF-8 JSON (:func:`encode_record`; numpy scalars and arrays become plain
JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from feedforge.errors import StoreError, ValidationError
from feedforge.store.base import encode_vector

PREFIX = "ff"

# The record kinds of a version (the ``{kind}`` segment of a version's keys).
USER_EMB, ITEM_EMB, USER_FEAT, ITEM_FEAT = "user_emb", "item_emb", "user_feat", "item_feat"
FEED = "feed"
"""Precomputed feeds of ``feedforge batch-score`` (:mod:`feedforge.publish.batch`)."""
USER_KINDS = frozenset({USER_EMB, USER_FEAT, FEED})
"""The kinds keyed by user id (hash-tagged by user in a cluster, with the user's history)."""
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValidationError(
            f"invalid {what} {value!r}: use only letters, digits, '_', '.' and '-'",
            **{what: str(value)},
        )
    return value


class Keys:
    """The keys of one namespace.

    Args:
        namespace: Separates several deployments sharing one Redis database or SQLite file.
        cluster: Hash-tag the keys for Redis Cluster (see the module docs).

    Example:
        >>> keys = Keys("prod")
        >>> keys.item("20260101T000000000Z-3f9a1c", "item_emb", "i42")
        'ff:prod:v:20260101T000000000Z-3f9a1c:item_emb:i42'
    """

    def __init__(self, namespace: str, cluster: bool = False) -> None:
        self.namespace = _check_name("namespace", namespace)
        self.prefix = f"{PREFIX}:{namespace}:"
        self.cluster = cluster
        # The control keys' slot, and how a user-keyed id is written.
        self._control = f":{{{namespace}}}" if cluster else ""
        self._user = "{{{}}}" if cluster else "{}"

    def __repr__(self) -> str:
        return f"Keys({self.namespace!r}{', cluster=True' if self.cluster else ''})"

    # -- versioned data ---------------------------------------------------------------------
    def current(self) -> str:
        """The pointer to the current version."""
        return f"{self.prefix}current{self._control}"

    def versions(self) -> str:
        """The set of versions that have metadata (a sorted set in Redis)."""
        return f"{self.prefix}versions{self._control}"

    def version_member_prefix(self) -> str:
        """The prefix of every :meth:`version_member` key."""
        return f"{self.versions()}:"

    def version_member(self, version: str) -> str:
        """One member of :meth:`versions` stored as its own key (the embedded backend)."""
        return f"{self.version_member_prefix()}{_check_name('version', version)}"

    def version_prefix(self, version: str) -> str:
        """The prefix, ending with ``:``, of every key of ``version`` (metadata included)."""
        return f"{self.prefix}v:{_check_name('version', version)}:"

    def meta(self, version: str) -> str:
        """A version's metadata."""
        return f"{self.version_prefix(version)}meta{self._control}"

    def item(self, version: str, kind: str, id: str) -> str:
        """One vector or record of ``kind`` (e.g. ``"item_emb"``) in ``version``."""
        return self.items(version, kind, [id])[0]

    def items(self, version: str, kind: str, ids: Sequence[str]) -> list[str]:
        """:meth:`item` for many ids (validates ``version`` and ``kind`` once)."""
        prefix = self.item_prefix(version, kind)
        if self.cluster and kind in USER_KINDS:
            return [f"{prefix}{{{id}}}" for id in ids]
        return [f"{prefix}{id}" for id in ids]

    def counts_prefix(self, version: str) -> str:
        """The prefix of every :meth:`counts` key of a version."""
        return f"{self.version_prefix(version)}counts{self._control}:"

    def counts(self, version: str, name: str) -> str:
        """A version's named set of counters (deleted with the version)."""
        return f"{self.counts_prefix(version)}{_check_name('counts', name)}"

    def item_prefix(self, version: str, kind: str) -> str:
        """The prefix of every key of ``kind`` in ``version``."""
        return f"{self.version_prefix(version)}{_check_name('kind', kind)}:"

    # -- live per-user state ----------------------------------------------------------------
    def history_prefix(self) -> str:
        """The prefix of every user's history key."""
        return f"{self.prefix}hist:"

    def history(self, user_id: str) -> str:
        """One user's recent history."""
        return f"{self.history_prefix()}{self._user.format(user_id)}"

    def applied_prefix(self) -> str:
        """The prefix of every :meth:`applied` key."""
        return f"{self.prefix}applied:"

    def applied(self, token: str) -> str:
        """Marks a history write with that token as done (it is not repeated)."""
        return f"{self.applied_prefix()}{token}"

    # -- documents ----------------------------------------------------------------------------
    def document(self, name: str) -> str:
        """A revisioned control document (e.g. ``"experiments"``), unversioned."""
        return f"{self.prefix}doc:{_check_name('document', name)}"


def glob_pattern(prefix: str) -> str:
    """A Redis ``SCAN MATCH`` pattern matching every key that starts with ``prefix``."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", prefix) + "*"


def encode_vectors(ids: Sequence[str], vectors: np.ndarray) -> list[bytes]:
    """One float32 blob per id (see :func:`~feedforge.store.base.encode_vector`).

    Args:
        ids: ``N`` ids.
        vectors: ``(N, D)`` array with ``D >= 1``, any real dtype (stored as float32).

    Raises:
        ValidationError: ``vectors`` is not ``(len(ids), D)``.
    """
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] != len(ids) or array.shape[1] == 0:
        raise ValidationError(
            f"vectors must have shape (len(ids), D) = ({len(ids)}, D>=1), got {array.shape}"
        )
    blob = encode_vector(array)
    step = array.shape[1] * 4
    return [blob[i * step : (i + 1) * step] for i in range(array.shape[0])]


def encode_records(ids: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """:func:`encode_record` for each of ``records``, one per id.

    Raises:
        ValidationError: the lengths differ or a record is not JSON serialisable.
    """
    if len(records) != len(ids):
        raise ValidationError(f"got {len(records)} records for {len(ids)} ids")
    return [encode_record(record) for record in records]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record (or version metadata) as compact UTF-8 JSON.

    Raises:
        ValidationError: the record is not a mapping of JSON-serialisable values.
    """
    if not isinstance(record, Mapping):
        raise ValidationError(f"a record must be a mapping, got {type(record).__name__}")
    try:
        text = json.dumps(
            dict(record), separators=(",", ":"), ensure_ascii=False, default=_json_default
        )
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"record is not JSON serialisable: {exc}") from exc
    return text.encode("utf-8")


def decode_record(blob: bytes) -> dict[str, Any]:
    """The inverse of :func:`encode_record`.

    Raises:
        StoreError: the stored bytes are not a JSON object (a corrupt or foreign value).
    """
    try:
        value = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"stored record is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StoreError(f"stored record is a JSON {type(value).__name__}, not an object")
    return value
