"""Reading the service's feature log: the exact feature vectors of a sample of scored requests.

The service (:mod:`feedforge.serving.monitor`) writes one JSON object per sampled request to
``WORKDIR/featurelog/feeds-YYYYMMDD-HHMMSS-<pid>-<n>.jsonl``
(:class:`~feedforge.serving.feedlog.FeedLog` files)::

    {"ts": "2026-12-01T12:00:00.123456+00:00", "request_id": "r1", "user_id": "u1",
     "device": "tv", "version": "...", "variant": "default", "scored_at_s": 1796391966.75,
     "names": ["position", ...], "item_ids": ["i1", ...], "features": [[0.0, ...], ...],
     "items_total": 0, "truncated": false}

``device`` null means the user's last device was used; ``scored_at_s`` is the scoring clock
(the version's snapshot time advanced by the wall time since its publish); ``features`` has
one row per ``item_ids`` entry and one column per ``names`` entry (null: NaN). An optional
``live_history`` (bool or count) says whether the user had live history.

:func:`read_feature_log` keeps every good line and reports each bad one (``file:line:
problem``) instead of failing or dropping it silently.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from feedforge.errors import DataError

REQUEST_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line": pl.Int64(),
    "ts": pl.Datetime("us", "UTC"),
    "request_id": pl.String(),
    "user_id": pl.String(),
    "device": pl.String(),
    "version": pl.String(),
    "variant": pl.String(),
    "scored_at_s": pl.Float64(),
    "scored_at": pl.Datetime("us", "UTC"),
    "live_history": pl.Boolean(),
    "n_items": pl.Int64(),
}
"""The columns of :attr:`FeatureLog.requests`."""


@dataclass(frozen=True)
class FeatureLog:
    """The logged requests and their candidates' feature rows.

    Attributes:
        requests: One row per logged request (:data:`REQUEST_SCHEMA`; ``scored_at`` is
            ``scored_at_s`` as a UTC time, ``live_history`` null when the line did not say).
        rows: One row per scored candidate: ``request`` (the row of ``requests``),
            ``item_id``, and one Float64 column per logged feature name (null where a request
            did not log that name).
        names: The logged feature names, in the order first seen.
        errors: ``file:line: problem`` of each line that was not read.
    """

    requests: pl.DataFrame
    rows: pl.DataFrame
    names: list[str]
    errors: list[str] = field(default_factory=list)


class _BadLine(ValueError):
    pass


def _string(record: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _BadLine(f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _parse(record: Any) -> tuple[dict[str, Any], list[str], list[str], np.ndarray]:
    """One line's request fields, names, item ids and ``(items, names)`` matrix."""
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    try:
        ts = datetime.fromisoformat(str(record.get("ts")))
    except ValueError as exc:
        raise _BadLine(f"'ts' is not an ISO time ({exc})") from exc
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    scored = record.get("scored_at_s")
    if isinstance(scored, bool) or not isinstance(scored, int | float) or not math.isfinite(scored):
        raise _BadLine(f"'scored_at_s' must be a finite number, got {scored!r}")
    names, item_ids = record.get("names"), record.get("item_ids")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _BadLine("'names' must be a list of feature names")
    if len(set(names)) != len(names):
        raise _BadLine("'names' repeats a feature name")
    if not isinstance(item_ids, list) or not all(isinstance(i, str) for i in item_ids):
        raise _BadLine("'item_ids' must be a list of item ids")
    try:
        matrix = np.asarray(record.get("features"), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _BadLine(f"'features' is not a matrix of numbers ({exc})") from exc
    if matrix.size == 0 and not item_ids:
        matrix = np.zeros((0, len(names)))
    if matrix.shape != (len(item_ids), len(names)):
        raise _BadLine(
            f"'features' has shape {matrix.shape}, expected ({len(item_ids)}, {len(names)}) "
            "(one row per item id, one column per name)"
        )
    live = record.get("live_history")
    fields = {
        "ts": ts.astimezone(UTC),
        "request_id": _string(record, "request_id", optional=True),
        "user_id": _string(record, "user_id"),
        "device": _string(record, "device", optional=True),
        "version": _string(record, "version"),
        "variant": _string(record, "variant", optional=True) or "default",
        "scored_at_s": float(scored),
        "scored_at": datetime.fromtimestamp(scored, UTC),  # as the service reads its clock
        "live_history": None if live is None else bool(live),
        "n_items": len(item_ids),
    }
    return fields, names, item_ids, matrix


def read_feature_log(directory: Path, since: datetime | None = None) -> FeatureLog:
    """Every logged request of ``directory`` (all days, processes and rotated files).

    Args:
        directory: ``WORKDIR/featurelog``.
        since: Keep only requests logged (``ts``) at or after this time (naive: UTC).

    Raises:
        DataError: the directory holds no feature log file. A bad line raises nothing: it is
            named in :attr:`FeatureLog.errors` and the other lines are read.
    """
    files = sorted(Path(directory).glob("feeds-*.jsonl"))
    if not files:
        raise DataError(
            f"no feature log in {directory}: the service logs one when "
            "monitoring.skew_sample > 0 and its version has a ranker"
        )
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    requests: list[dict[str, Any]] = []
    groups: dict[tuple[str, ...], list[tuple[int, list[str], np.ndarray]]] = {}
    errors: list[str] = []
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    fields, names, item_ids, matrix = _parse(json.loads(line))
                except (json.JSONDecodeError, _BadLine) as exc:
                    partial = "" if line.endswith("\n") else " (an unfinished last line?)"
                    errors.append(f"{path}:{number}: not a feature log record{partial}: {exc}")
                    continue
                if since is not None and fields["ts"] < since:
                    continue
                groups.setdefault(tuple(names), []).append((len(requests), item_ids, matrix))
                requests.append({"file": str(path), "line": number, **fields})
    frames = []
    for group, lines in groups.items():
        matrix = np.vstack([m for _, _, m in lines])
        columns: dict[str, Any] = {
            "request": np.concatenate(
                [np.full(len(ids), r, dtype=np.int64) for r, ids, _ in lines]
            ),
            "item_id": [i for _, ids, _ in lines for i in ids],
        }
        columns.update({name: matrix[:, j] for j, name in enumerate(group)})
        frames.append(pl.DataFrame(columns, schema_overrides={"item_id": pl.String}))
    rows = (
        pl.concat(frames, how="diagonal").sort("request", maintain_order=True)
        if frames
        else pl.DataFrame(schema={"request": pl.Int64, "item_id": pl.String})
    )
    all_names = list(dict.fromkeys(n for names in groups for n in names))
    return FeatureLog(
        requests=pl.DataFrame(requests, schema=REQUEST_SCHEMA),
        rows=rows,
        names=all_names,
        errors=errors,
    )
