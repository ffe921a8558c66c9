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

import itertools
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

    def labels(self) -> list[str]:
        """A readable label per bin (``[a, b)`` intervals or the category)."""
        if self.kind == "categorical":
            return list(self.categories)
        bounds = ["-inf", *(f"{e:.6g}" for e in self.edges), "inf"]
        return [f"[{lo}, {hi})" for lo, hi in itertools.pairwise(bounds)]

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
        """Rows profiled (those of the first column; every column counts each row once)."""
        return next(iter(self.counts.values())).rows if self.counts else 0

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
    """Counts rows into a spec's bins, fast enough for the request path (one
    ``searchsorted`` per numeric column).

    Not thread-safe on its own: the service guards it with a lock.
    """

    def __init__(self, spec: ProfileSpec) -> None:
        self.spec = spec
        self._profile = spec.empty()
        self._numeric = [c for c in spec.columns if c.kind == "numeric"]
        self._edges = {c.name: np.asarray(c.edges, dtype=np.float64) for c in self._numeric}
        self._defaults = {c.name: c.default for c in self._numeric}
        self._index = {
            c.name: {cat: j for j, cat in enumerate(c.categories)}
            for c in spec.columns
            if c.kind == "categorical"
        }

    def add_matrix(self, X: np.ndarray, names: Sequence[str]) -> None:
        """Count the rows of ``X`` (columns named ``names``; columns the spec lacks are
        skipped)."""
        position = {name: j for j, name in enumerate(names)}
        self.add_columns(
            {c.name: X[:, position[c.name]] for c in self._numeric if c.name in position}
        )

    def add_columns(
        self,
        numeric: Mapping[str, np.ndarray],
        categorical: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    ) -> None:
        """Count the rows of named numeric and categorical columns."""
        for name, values in numeric.items():
            column = self._profile.counts.get(name)
            if column is None:
                continue
            x = np.asarray(values, dtype=np.float64)
            null = np.isnan(x)
            n_null = int(null.sum())
            if n_null:
                column.nulls += n_null
                x = x[~null]
            b = np.searchsorted(self._edges[name], x, side="right")
            column.bins += np.bincount(b, minlength=len(column.bins))
            default = self._defaults[name]
            if default is not None:
                column.defaults += int(np.count_nonzero(x == default))
        for name, cats in (categorical or {}).items():
            column = self._profile.counts.get(name)
            if column is None:
                continue
            index = self._index[name]
            other = index[OTHER]
            for value in cats:
                if value is None:
                    column.nulls += 1
                else:
                    column.bins[index.get(str(value), other)] += 1

    def take(self) -> Profile:
        """The profile counted so far; the accumulator starts again from zero."""
        taken, self._profile = self._profile, self.spec.empty()
        return taken

    def pending(self) -> bool:
        """Whether rows were counted since the last :meth:`take`."""
        return any(c.rows for c in self._profile.counts.values())
