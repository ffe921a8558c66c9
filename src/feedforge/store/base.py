"""The online store interface shared by every backend.

Two kinds of data live in the store:

* **Versioned, published data** (embeddings, feature records, metadata). A publish writes all
  of a new version's keys first, then :meth:`OnlineStore.set_current` flips the ``current``
  pointer in one atomic write, so a reader that resolves the pointer once per request never
  sees a half-written version. Versions are immutable once published.
* **Live per-user state** (the recent history), unversioned, updated on every ingested event.

The key layout of both backends lives in :mod:`feedforge.store.keys`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class UserRead:
    """What one feed request reads about its user (:meth:`OnlineStore.read_user`).

    Attributes:
        current: The store's ``current`` version at the time of the read (None: nothing is
            published). When it differs from the version the read was made for, the other
            fields belong to that older version and the caller reads again.
        vector: The user's float32 embedding in that version, or None.
        record: The user's feature record in that version, or None.
        history: Up to ``n`` newest live-history items, newest first.
        extra: The user's record of the extra kind asked for (e.g. a precomputed feed), or
            None.
    """

    current: str | None
    vector: np.ndarray | None
    record: dict[str, Any] | None
    history: list[str]
    extra: dict[str, Any] | None = None


APPLIED_TOKEN_TTL_S = 30 * 86_400
"""How long a store remembers an :meth:`OnlineStore.append_histories` token."""


class OnlineStore(ABC):
    """A key-value online store. Backends: embedded (SQLite, no server) and Redis."""

    # -- versioned data ---------------------------------------------------------------------
    @abstractmethod
    def put_vectors(self, version: str, kind: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store one float32 vector per id.

        Args:
            version: The version being written (not yet current).
            kind: A namespace such as ``"user_emb"`` or ``"item_emb"``.
            ids: ``N`` ids.
            vectors: ``(N, D)`` array, stored as little-endian float32 bytes.
        """

    @abstractmethod
    def get_vectors(
        self, version: str, kind: str, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read vectors in one batched round trip.

        Returns:
            ``(N, D)`` float32 vectors (zeros where missing) and an ``(N,)`` bool mask of the
            ids found. ``D`` is 0 when no id was found.
        """

    @abstractmethod
    def put_records(
        self, version: str, kind: str, ids: Sequence[str], records: Sequence[Mapping[str, Any]]
    ) -> None:
        """Store one JSON-serialisable record (e.g. a feature dict) per id."""

    @abstractmethod
    def get_records(
        self, version: str, kind: str, ids: Sequence[str]
    ) -> list[dict[str, Any] | None]:
        """Read records in one batched round trip; ``None`` where an id is missing."""

    @abstractmethod
    def put_meta(self, version: str, meta: Mapping[str, Any]) -> None:
        """Store a version's metadata (JSON). A version without metadata is not publishable."""

    @abstractmethod
    def get_meta(self, version: str) -> dict[str, Any] | None:
        """A version's metadata, or ``None`` if the version does not exist."""

    @abstractmethod
    def set_current(self, version: str) -> None:
        """Atomically make ``version`` the current one.

        Raises:
            feedforge.errors.StoreError: the version has no metadata (was never written).
        """

    @abstractmethod
    def current_version(self) -> str | None:
        """The current version, or ``None`` before the first publish."""

    @abstractmethod
    def versions(self) -> list[str]:
        """All versions that have metadata, oldest first (version ids sort by time)."""

    @abstractmethod
    def delete_version(self, version: str) -> None:
        """Delete every key of a version.

        Raises:
            feedforge.errors.StoreError: ``version`` is the current version.
        """

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
        """Everything a feed request reads about one user, with the ``current`` pointer.

        Backends answer in one round trip where they can (Redis: one pipeline); this default
        makes one call per part.

        Args:
            version: The version the caller is serving (its guess of ``current``).
            user_id: The user.
            n_history: How many live-history items to read.
            vector_kind: The kind of the user's embedding (e.g. ``"user_emb"``).
            record_kind: The kind of the user's feature record (e.g. ``"user_feat"``).
            extra_kind: Another record kind to read for the user (e.g. ``"feed"``), or None.
        """
        vectors, found = self.get_vectors(version, vector_kind, [user_id])
        record = self.get_records(version, record_kind, [user_id])[0]
        extra = self.get_records(version, extra_kind, [user_id])[0] if extra_kind else None
        return UserRead(
            current=self.current_version(),
            vector=vectors[0] if found[0] else None,
            record=record,
            history=self.get_history(user_id, n_history),
            extra=extra,
        )

    # -- live per-user state ----------------------------------------------------------------
    @abstractmethod
    def append_histories(
        self, items: Mapping[str, Sequence[str]], max_len: int, token: str | None = None
    ) -> None:
        """Append items to users' recent histories in one batched write (per user, the last
        id is the newest). Each history keeps its ``max_len`` newest entries.

        Args:
            items: user -> items, oldest first.
            max_len: The most entries a history keeps.
            token: Makes the write happen at most once: a call with a token the store has
                seen in the last :data:`APPLIED_TOKEN_TTL_S` writes nothing (the service's
                replay of held updates, :mod:`feedforge.serving.held`, may repeat a
                write it cannot tell reached the store). Redis splits a large call into
                several server-side calls, each applied at most once, so a repeated call
                must pass the same ``items`` in the same order.

        Raises:
            feedforge.errors.ValidationError: ``max_len`` < 1.
        """

    def append_history(self, user_id: str, item_ids: Sequence[str], max_len: int) -> None:
        """Append items to one user's recent history (the last id is the newest)."""
        self.append_histories({user_id: item_ids}, max_len)

    @abstractmethod
    def get_histories(self, user_ids: Sequence[str], n: int) -> list[list[str]]:
        """Up to ``n`` newest history items per user, newest first, in one round trip."""

    def get_history(self, user_id: str, n: int) -> list[str]:
        """Up to ``n`` newest history items of one user, newest first."""
        return self.get_histories([user_id], n)[0]

    @abstractmethod
    def clear_histories(self) -> None:
        """Delete every user's live history (used when a work directory is rebuilt)."""

    # -- documents --------------------------------------------------------------------------
    @abstractmethod
    def get_document(self, name: str) -> tuple[int, dict[str, Any] | None]:
        """A control document (e.g. the experiment definitions) with its revision.

        Returns:
            ``(revision, document)``; ``(0, None)`` when it was never written.
        """

    @abstractmethod
    def put_document(self, name: str, document: Mapping[str, Any], expected_revision: int) -> int:
        """Replace a control document if its revision is still ``expected_revision``
        (compare and set, atomic), so concurrent editors never overwrite each other.

        Returns:
            The new revision (``expected_revision + 1``).

        Raises:
            feedforge.errors.StoreConflictError: the document's revision moved on (read it
                again and redo the change).
        """

    # -- counters ---------------------------------------------------------------------------
    @abstractmethod
    def add_counts(self, version: str, name: str, counts: Mapping[str, int]) -> bool:
        """Add ``counts`` to a version's named counters, all or none, atomically: writers on
        any number of processes and hosts add up exactly (no last writer wins). A field not
        there yet starts at 0. The counters are deleted with the version.

        Returns:
            False when the version has no metadata (never published, or deleted): nothing
            is added, so a late writer never leaves keys of a deleted version behind.
        """

    @abstractmethod
    def get_counts(self, version: str, name: str) -> dict[str, int]:
        """A version's named counters (``{}`` when none were added)."""

    @abstractmethod
    def counts_names(self, version: str) -> list[str]:
        """The names of a version's counters, sorted."""

    # -- lifecycle --------------------------------------------------------------------------
    def identity(self) -> str:
        """What tells this store apart from another one sharing the work directory and its
        bundles (the backend, where it lives, the namespace); no secret in it."""
        return repr(self)

    @abstractmethod
    def ping(self) -> bool:
        """``True`` when the backend answers; never raises."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and file handles."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_vector(vector: np.ndarray) -> bytes:
    """A vector as compact little-endian float32 bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def decode_vectors(blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Decode float32 blobs into an ``(N, D)`` array (zeros where ``None``) and a found mask."""
    found = np.array([b is not None for b in blobs], dtype=bool)
    dims = {len(b) // 4 for b in blobs if b is not None}
    if not dims:
        return np.zeros((len(blobs), 0), dtype=np.float32), found
    if len(dims) != 1:
        from feedforge.errors import StoreError

        raise StoreError(f"stored vectors have mixed dimensions {sorted(dims)}")
    (dim,) = dims
    out = np.zeros((len(blobs), dim), dtype=np.float32)
    for i, blob in enumerate(blobs):
        if blob is not None:
            out[i] = np.frombuffer(blob, dtype="<f4")
    return out, found
