"""What every protocol returns (:class:`EvalFold`, :class:`ProtocolSplit`) and the frame
helpers they share.

The helpers work on the frame :func:`_prepare` returns (``_row, user_id, item_id, timestamp,
rating``, input order) and are private to :mod:`feedforge.evaluation.protocols`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from feedforge.datasets.idmap import IdMap
from feedforge.datasets.interactions import Interactions
from feedforge.errors import DataError, ValidationError


@dataclass(frozen=True)
class EvalFold:
    """One train / held-out pair in index space.

    Attributes:
        train: What the model is fitted on for this fold.
        relevant: ``(n_users, n_items)`` CSR, 1.0 for each held-out relevant (user, item).
        exclude: ``(n_users, n_items)`` CSR of items never to rank per user (full ranking).
        users: ``(U,)`` int64 user indices evaluated, ascending.
        candidates: ``(U, C)`` int64 items to rank among, row ``u`` for ``users[u]``, the
            target in column 0 (sampled protocols); ``None`` ranks the whole catalog.
    """

    train: Interactions
    relevant: sp.csr_matrix
    exclude: sp.csr_matrix
    users: np.ndarray
    candidates: np.ndarray | None = None


@dataclass(frozen=True)
class ProtocolSplit:
    """A protocol applied to a frame: id maps, a validation fold and a test fold.

    Attributes:
        protocol: The registered name.
        users: User id map (index space of every fold).
        items: Item id map.
        validation: Fold for hyper-parameter choice only.
        test: Fold for the final numbers.
        k: Length of the ranked lists the metrics need.
        metrics: The protocol's metric names, e.g. ``("ndcg@10", "hr@10")``.
        info: Row and user counts, boundaries and seeds, JSON-ready.
    """

    protocol: str
    users: IdMap
    items: IdMap
    validation: EvalFold
    test: EvalFold
    k: int
    metrics: tuple[str, ...]
    info: dict[str, Any]


# --------------------------------------------------------------------------- helpers


def _prepare(frame: pl.DataFrame) -> pl.DataFrame:
    """Check the schema; return ``_row, user_id, item_id, timestamp, rating`` in input order."""
    missing = {"user_id", "item_id", "timestamp"} - set(frame.columns)
    if missing:
        raise ValidationError(f"interactions frame lacks column(s) {sorted(missing)}")
    if not isinstance(frame.schema["timestamp"], pl.Datetime):
        raise ValidationError(f"timestamp must be a datetime, got {frame.schema['timestamp']}")
    rating = pl.col("rating") if "rating" in frame.columns else pl.lit(None)
    try:
        data = frame.select(
            pl.col("user_id").cast(pl.String),
            pl.col("item_id").cast(pl.String),
            pl.col("timestamp"),
            rating.cast(pl.Float64).alias("rating"),
        )
    except pl.exceptions.PolarsError as exc:
        raise ValidationError(f"interactions frame: {exc}") from exc
    if any(data.get_column(c).null_count() for c in ("user_id", "item_id", "timestamp")):
        raise ValidationError("user_id, item_id and timestamp must not be null")
    if data.height == 0:
        raise DataError("the interactions frame is empty")
    return data.with_row_index("_row")


def _natural_codes(ids: pl.Series) -> np.ndarray:
    """Dense codes in the order the source's pandas code sorts these ids.

    The sources read MovieLens ids as integers, so ids that are all integers sort numerically
    (``"2" < "10"``); other ids sort as strings.
    """
    as_int = ids.cast(pl.Int64, strict=False)
    key = as_int if as_int.null_count() == 0 and as_int.n_unique() == ids.n_unique() else ids
    return key.rank("dense").to_numpy().astype(np.int64) - 1


def _with_index(data: pl.DataFrame, users: IdMap, items: IdMap) -> pl.DataFrame:
    return data.with_columns(
        users.index(data.get_column("user_id")).alias("user_idx"),
        items.index(data.get_column("item_id")).alias("item_idx"),
    )


def _interactions(rows: pl.DataFrame, users: IdMap, items: IdMap) -> Interactions:
    """Rows with ``user_idx`` / ``item_idx`` as unit-weight :class:`Interactions`."""
    return Interactions(
        user_idx=rows.get_column("user_idx").to_numpy().astype(np.int32),
        item_idx=rows.get_column("item_idx").to_numpy().astype(np.int32),
        weight=np.ones(rows.height, dtype=np.float32),
        timestamp_us=rows.get_column("timestamp").dt.epoch("us").to_numpy().astype(np.int64),
        n_users=len(users),
        n_items=len(items),
        rating=rows.get_column("rating").fill_null(float("nan")).to_numpy().astype(np.float32),
    )


def _binary(user_idx: np.ndarray, item_idx: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """``shape`` float32 CSR with 1.0 at each distinct (user, item)."""
    matrix = sp.csr_matrix(
        (np.ones(len(user_idx), dtype=np.float32), (user_idx, item_idx)),
        shape=shape,
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _holdout_fold(
    train: pl.DataFrame, heldout: pl.DataFrame, users: IdMap, items: IdMap
) -> EvalFold:
    """Full-ranking fold: relevant = every held-out row, exclude = the fold's train items."""
    shape = (len(users), len(items))
    fit = _interactions(train, users, items)
    relevant = _binary(
        heldout.get_column("user_idx").to_numpy(), heldout.get_column("item_idx").to_numpy(), shape
    )
    return EvalFold(
        train=fit,
        relevant=relevant,
        exclude=_binary(fit.user_idx, fit.item_idx, shape),
        users=np.flatnonzero(np.diff(relevant.indptr) > 0).astype(np.int64),
    )


def _is_positive(threshold: float | None, strict: bool) -> pl.Expr:
    """Rows that count as positive: all when ``threshold`` is None; a null rating (an implicit
    event) always counts; else ``rating >= threshold`` (``>`` when ``strict``)."""
    if threshold is None:
        return pl.lit(True)
    above = pl.col("rating") > threshold if strict else pl.col("rating") >= threshold
    return pl.col("rating").is_null() | above
