"""Distribution profiles: compact, exactly mergeable summaries of features and scores.

A :class:`Profile` summarises columns of rows (a ranker's feature matrix, its scores):

* a **numeric** column by counts over bins whose cut points are the reference's quantiles
  (:func:`reference_profile`: ``bins`` quantile bins, ties merged, so a column with few
  distinct values gets one bin per value), plus its null (NaN) count and its *default* count
  (rows equal to the value a missing user or item record produces, e.g. a CTR of 0.1);
* a **categorical** column by its category counts (categories unseen by the reference go to
  :data:`OTHER`).

Every number is an integer count, so two profiles over the same bins merge exactly by adding
(:meth:`Profile.merge`): what every worker of every host adds to the online store
(:meth:`~feedforge.store.base.OnlineStore.add_counts`) is the profile of everything they
profiled. A version's *reference profile* (its training data, written at publish with the
bundle) fixes the bins; a *serving profile* counts what the service scored in the same bins
(:meth:`ProfileSpec.empty`, :meth:`ProfileAccumulator.add`), and drift compares the two
(:mod:`feedforge.monitoring.drift`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from feedforge.errors import ArtifactError, DataError

SCHEMA_VERSION = 1
OTHER = "__other__"
"""The category every value a reference did not see is counted as."""
NULL, DEFAULT = "null", "default"

Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class ColumnSpec:
    """How one column is binned.

    Attributes:
        name: The column (a feature, ``score`` or ``score_<head>``).
        kind: ``numeric`` or ``categorical``.
        edges: Numeric: the increasing cut points; bin ``b`` holds ``edges[b-1] <= x <
            edges[b]`` (``len(edges) + 1`` bins, the outer ones open).
        categories: Categorical: the reference's categories, then :data:`OTHER`.
        default: Numeric: the value a missing record gives the column (None: no default).
    """

    name: str
    kind: Kind
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    default: float | None = None

    @property
    def n_bins(self) -> int:
        """The number of bins (categories, :data:`OTHER` included)."""
        return len(self.edges) + 1 if self.kind == "numeric" else len(self.categories)

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            out["edges"] = list(self.edges)
            out["default"] = self.default
        else:
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ColumnSpec:
        """The spec :meth:`to_json` wrote."""
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            edges=tuple(float(e) for e in data.get("edges", ())),
            categories=tuple(str(c) for c in data.get("categories", ())),
            default=None if data.get("default") is None else float(data["default"]),
        )


@dataclass
class ColumnCounts:
    """One column's counts: ``bins`` (``(n_bins,)`` int64), ``nulls`` and ``defaults``."""

    bins: np.ndarray
    nulls: int = 0
    defaults: int = 0

    @property
    def rows(self) -> int:
        """Rows counted, nulls included."""
        return int(self.bins.sum()) + self.nulls


@dataclass(frozen=True)
class ProfileSpec:
    """The columns of a profile and their bins."""

    columns: tuple[ColumnSpec, ...]

    def names(self) -> list[str]:
        """The column names, in order."""
        return [c.name for c in self.columns]

    def empty(self) -> Profile:
        """A profile of no rows over these bins."""
        return Profile(
            self,
            {c.name: ColumnCounts(np.zeros(c.n_bins, dtype=np.int64)) for c in self.columns},
        )


@dataclass
class Profile:
    """Counts per column over a :class:`ProfileSpec`'s bins (see the module docs).

    Attributes:
        spec: The columns and their bins.
        counts: Column name -> its counts.
        meta: Free-form provenance (the version, what was profiled, the rows sampled).
    """

    spec: ProfileSpec
    counts: dict[str, ColumnCounts]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows profiled: the most any column counted (columns of a request, such as the
        user's features, count once per feed; columns of an item once per shown item)."""
        return max((c.rows for c in self.counts.values()), default=0)

    def merge(self, other: Profile) -> Profile:
        """The profile of both profiles' rows (same spec required): exact."""
        if other.spec != self.spec:
            raise DataError("cannot merge profiles over different bins (different references)")
        merged = {
            name: ColumnCounts(
                c.bins + other.counts[name].bins,
                c.nulls + other.counts[name].nulls,
                c.defaults + other.counts[name].defaults,
            )
            for name, c in self.counts.items()
        }
        return Profile(self.spec, merged, dict(self.meta))

    # -- the online store's flat form -------------------------------------------------------
    def to_fields(self, window: int) -> dict[str, int]:
        """The counts as ``{"window|column|bin": n}`` fields (only non-zero ones), the form
        :meth:`~feedforge.store.base.OnlineStore.add_counts` adds up; ``window`` is the
        start (epoch seconds) of the time window the rows were served in."""
        fields: dict[str, int] = {}
        for name, c in self.counts.items():
            for b in np.flatnonzero(c.bins):
                fields[f"{window}|{name}|{int(b)}"] = int(c.bins[b])
            if c.nulls:
                fields[f"{window}|{name}|{NULL}"] = c.nulls
            if c.defaults:
                fields[f"{window}|{name}|{DEFAULT}"] = c.defaults
        return fields

    @classmethod
    def windows_from_fields(
        cls, spec: ProfileSpec, fields: Mapping[str, int]
    ) -> dict[int, Profile]:
        """The profile of each time window that :meth:`to_fields` fields (summed over
        writers) describe, by window start. Fields of columns or bins the spec does not have
        are ignored (another version's layout)."""
        windows: dict[int, Profile] = {}
        for key, n in fields.items():
            window_text, _, rest = key.partition("|")
            name, _, slot = rest.rpartition("|")
            if not window_text.isdigit():
                continue
            profile = windows.get(int(window_text))
            if profile is None:
                profile = windows[int(window_text)] = spec.empty()
                profile.meta["window"] = int(window_text)
            column = profile.counts.get(name)
            if column is None:
                continue
            if slot == NULL:
                column.nulls += int(n)
            elif slot == DEFAULT:
                column.defaults += int(n)
            elif slot.isdigit() and int(slot) < len(column.bins):
                column.bins[int(slot)] += int(n)
        return dict(sorted(windows.items()))

    # -- files ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The profile as JSON (spec and counts)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "meta": self.meta,
            "rows": self.rows,
            "columns": [
                {
                    **spec.to_json(),
                    "counts": self.counts[spec.name].bins.tolist(),
                    "nulls": self.counts[spec.name].nulls,
                    "defaults": self.counts[spec.name].defaults,
                }
                for spec in self.spec.columns
            ],
        }

    def save(self, path: Path) -> None:
        """Write the profile as a JSON file (atomically: a temporary file, then a rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        """The profile :meth:`to_json` wrote."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"profile schema {data.get('schema_version')!r} != {SCHEMA_VERSION}")
        specs = tuple(ColumnSpec.from_json(c) for c in data["columns"])
        counts = {
            c["name"]: ColumnCounts(
                np.asarray(c["counts"], dtype=np.int64), int(c["nulls"]), int(c["defaults"])
            )
            for c in data["columns"]
        }
        return cls(ProfileSpec(specs), counts, dict(data.get("meta", {})))

    @classmethod
    def load(cls, path: Path, build_command: str = "feedforge publish") -> Profile:
        """Read a profile file.

        Raises:
            ArtifactError: the file is missing or not a profile (says how to rebuild it).
        """
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise ArtifactError(path, "no profile here", build_command) from exc
        except (ValueError, KeyError, TypeError, DataError) as exc:
            raise ArtifactError(path, f"not a valid profile ({exc})", build_command) from exc


# -- building -----------------------------------------------------------------------------------
def quantile_edges(values: np.ndarray, bins: int) -> tuple[float, ...]:
    """The cut points of ``bins`` equal-frequency bins of ``values`` (NaN ignored), ties
    merged: a column of few distinct values gets one bin per value (its cut points are the
    values after the smallest)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return ()
    distinct = np.unique(finite)
    if len(distinct) <= bins:
        return tuple(float(v) for v in distinct[1:])
    cuts = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf")
    # A cut at the minimum would leave the first bin empty by construction.
    return tuple(float(v) for v in np.unique(cuts) if v > distinct[0])


def reference_spec(
    numeric: Mapping[str, np.ndarray],
    categorical: Mapping[str, np.ndarray] | None = None,
    bins: int = 20,
    defaults: Mapping[str, float] | None = None,
) -> ProfileSpec:
    """The bins of a reference: quantile cut points per numeric column, the categories seen
    per categorical column (most frequent first, then :data:`OTHER`)."""
    defaults = defaults or {}
    columns = [
        ColumnSpec(
            name,
            "numeric",
            edges=quantile_edges(np.asarray(values, dtype=np.float64), bins),
            default=defaults.get(name),
        )
        for name, values in numeric.items()
    ]
    for name, values in (categorical or {}).items():
        seen, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
        order = np.argsort(-counts, kind="stable")
        columns.append(
            ColumnSpec(name, "categorical", categories=(*(str(seen[j]) for j in order), OTHER))
        )
    return ProfileSpec(tuple(columns))


def reference_profile(
    numeric: Mapping[str, np.ndarray],
    categorical: Mapping[str, np.ndarray] | None = None,
    bins: int = 20,
    defaults: Mapping[str, float] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Profile:
    """The reference profile of training columns: their bins (:func:`reference_spec`) and
    their counts in them."""
    spec = reference_spec(numeric, categorical, bins, defaults)
    accumulator = ProfileAccumulator(spec)
    accumulator.add_columns(numeric, categorical or {})
    profile = accumulator.take()
    profile.meta = dict(meta or {})
    return profile


class ProfileAccumulator:
    """Counts rows into a spec's bins, fast enough for the request path.

    Numeric counts live in one flat array (each column's bins, then its null and default
    slots); a small batch (a feed's rows) is binned for every column at once by comparing
    with a padded matrix of cut points, a large one (a reference) column by column with
    ``searchsorted``. Not thread-safe on its own: the service guards it with a lock.
    """

    _BROADCAST_ROWS = 256

    def __init__(self, spec: ProfileSpec) -> None:
        self.spec = spec
        self._numeric = [c for c in spec.columns if c.kind == "numeric"]
        self.numeric_names = tuple(c.name for c in self._numeric)
        self._position = {name: j for j, name in enumerate(self.numeric_names)}
        widest = max((len(c.edges) for c in self._numeric), default=0)
        self._edges = np.full((len(self._numeric), widest), np.inf)
        for j, column in enumerate(self._numeric):
            self._edges[j, : len(column.edges)] = column.edges
        self._column_edges = [np.asarray(c.edges, dtype=np.float64) for c in self._numeric]
        self._defaults = np.asarray(
            [np.nan if c.default is None else c.default for c in self._numeric]
        )
        sizes = np.asarray([c.n_bins for c in self._numeric], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        n_bins = int(sizes.sum())
        self._null_slot = n_bins + np.arange(len(self._numeric))
        self._skip_slot = n_bins + len(self._numeric)
        self._flat = np.zeros(self._skip_slot + 1, dtype=np.int64)
        self._default_counts = np.zeros(len(self._numeric), dtype=np.int64)
        self._categorical = {
            c.name: (c, {cat: j for j, cat in enumerate(c.categories)})
            for c in spec.columns
            if c.kind == "categorical"
        }
        self._category_counts = {
            name: np.zeros(c.n_bins, dtype=np.int64) for name, (c, _) in self._categorical.items()
        }
        self._category_nulls = dict.fromkeys(self._categorical, 0)

    def add_matrix(self, X: np.ndarray, names: Sequence[str]) -> None:
        """Count the rows of ``X`` (columns named ``names``; columns the spec lacks are
        skipped, spec columns ``names`` lacks are not counted)."""
        self.add_columns({name: X[:, j] for j, name in enumerate(names)})

    def add_columns(
        self,
        numeric: Mapping[str, np.ndarray],
        categorical: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    ) -> None:
        """Count the rows of named numeric and categorical columns."""
        present = [name for name in self.numeric_names if name in numeric]
        if present:
            n = len(numeric[present[0]])
            rows = np.full((n, len(self.numeric_names)), np.nan)
            counted = np.zeros((n, len(self.numeric_names)), dtype=bool)
            for name in present:
                j = self._position[name]
                rows[:, j] = numeric[name]
                counted[:, j] = True
            self.add_rows(rows, counted)
        for name, values in (categorical or {}).items():
            self.add_categories(name, values)

    def add_rows(self, rows: np.ndarray, counted: np.ndarray | None = None) -> None:
        """Count a ``(n, C)`` matrix whose columns are :attr:`numeric_names` in order;
        ``counted`` (same shape, bool) leaves out the cells that are False (e.g. a request's
        user features counted once per feed, not once per shown item)."""
        n = len(rows)
        if not n or not len(self.numeric_names):
            return
        null = np.isnan(rows)
        if n <= self._BROADCAST_ROWS:
            bins = (rows[:, :, None] >= self._edges[None, :, :]).sum(axis=2)
        else:
            bins = np.empty(rows.shape, dtype=np.int64)
            for j, edges in enumerate(self._column_edges):
                bins[:, j] = np.searchsorted(edges, rows[:, j], side="right")
        flat = self._offsets[None, :] + bins
        flat = np.where(null, self._null_slot[None, :], flat)
        defaults = rows == self._defaults[None, :]
        if counted is not None:
            flat = np.where(counted, flat, self._skip_slot)
            defaults &= counted
        self._flat += np.bincount(flat.ravel(), minlength=len(self._flat))
        self._default_counts += defaults.sum(axis=0)

    def add_categories(self, name: str, values: Sequence[str | None] | np.ndarray) -> None:
        """Count the values of a categorical column (unknown ones as :data:`OTHER`)."""
        entry = self._categorical.get(name)
        if entry is None:
            return
        _, index = entry
        other = index[OTHER]
        counts = self._category_counts[name]
        for value in values:
            if value is None:
                self._category_nulls[name] += 1
            else:
                counts[index.get(str(value), other)] += 1

    def take(self) -> Profile:
        """The profile counted so far; the accumulator starts again from zero."""
        profile = self.spec.empty()
        for j, column in enumerate(self._numeric):
            start = int(self._offsets[j])
            counts = profile.counts[column.name]
            counts.bins[:] = self._flat[start : start + column.n_bins]
            counts.nulls = int(self._flat[self._null_slot[j]])
            counts.defaults = int(self._default_counts[j])
        for name in self._categorical:
            profile.counts[name].bins[:] = self._category_counts[name]
            profile.counts[name].nulls = self._category_nulls[name]
        self._flat[:] = 0
        self._default_counts[:] = 0
        for name in self._categorical:
            self._category_counts[name][:] = 0
            self._category_nulls[name] = 0
        return profile
