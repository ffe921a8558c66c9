"""Training-serving skew: recompute offline, point in time, the feature vectors the service
scored, and measure per feature how often and how far the two disagree.

The service logs a sample of scored requests (``monitoring.skew_sample``) to
``WORKDIR/featurelog`` (:mod:`feedforge.serving.monitor`): per request the user, the device,
the version, the *scoring clock* ``scored_at_s`` and every candidate's exact feature row.
:func:`skew_report` recomputes each row the way training computes features, grouped by version:

* the raw counters from the event log, counted strictly before the version's
  ``snapshot_time`` (:func:`~feedforge.features.offline.snapshot_counters`), read per
  (user, item) with the request's own scoring clock (item age, hour of day) and device
  (:func:`~feedforge.features.offline.snapshot_candidate_counters`);
* ``retrieval_score`` as training defines it, ``<U[user], V[item]>`` of the version's
  embeddings in the online store;
* the features by :func:`~feedforge.features.definitions.feature_matrix`, the one formula.

A row *mismatches* on a feature when ``|online - offline| > atol + rtol * |offline|`` (both
NaN is a match). What a mismatch can mean, besides a bug in either path:

* ``retrieval_score`` of a user with **live history** (events ingested since the publish):
  the service scores ``q = u + w * mean(V[history])``, not ``u``, by design, so those rows
  mismatch; the report counts them apart (``live_history_*``). Whether a user had live
  history is the log line's ``live_history`` when it carries one, else whether the user has a
  live history in the store *now* (histories only grow, unless they expire under
  ``store.history_ttl_days``);
* counters of events **ingested after the publish with earlier timestamps** (late events):
  the published snapshot could not count them, the event log now does;
* a catalog changed since the publish (durations, prices, creation times).

A request is skipped, with its reason counted, when its version is neither in the store nor
on disk (``WORKDIR/bundles/<version>/manifest.json``); a version whose metadata only the bundle
still has is compared on every feature but ``retrieval_score`` (its embeddings are gone).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from feedforge.artifacts import read_manifest
from feedforge.errors import ArtifactError
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.features.definitions import FEATURES, feature_matrix
from feedforge.features.offline import snapshot_candidate_counters, snapshot_counters
from feedforge.monitoring.featurelog import FeatureLog, read_feature_log
from feedforge.store.base import OnlineStore
from feedforge.store.bundle import BUNDLE_ARTIFACT, BUNDLE_SCHEMA_VERSION
from feedforge.store.keys import ITEM_EMB, USER_EMB
from feedforge.workdir import Workdir

ATOL = 1e-6
RTOL = 1e-4
RETRIEVAL = "retrieval_score"
_CHUNK = 10_000

UNKNOWN_VERSION = "version neither in the store nor in WORKDIR/bundles"
BAD_META = "version metadata lacks snapshot_time or n_categories"
NO_CANDIDATES = "no scored candidates"


@dataclass(frozen=True)
class FeatureSkew:
    """One feature's comparison.

    Attributes:
        feature: The feature's name.
        rows: Rows compared.
        mismatches: Rows over the tolerance.
        mismatch_rate: ``mismatches / rows`` (0 when no row was compared).
        mean_abs_diff: Mean ``|online - offline|`` over the mismatching rows (None: none).
        max_abs_diff: Largest ``|online - offline|`` over the mismatching rows.
        mean_rel_diff: Mean ``|online - offline| / |offline|`` over the mismatching rows with
            ``offline != 0`` (None: none).
        live_history_rows: Rows compared of users with live history (see the module docs).
        live_history_mismatches: Their mismatches.
        example: The mismatching row of largest difference: ``request_id``, ``user_id``,
            ``item_id``, ``version``, ``online``, ``offline`` (``"nan"``, ``"inf"`` where not
            finite).
    """

    feature: str
    rows: int
    mismatches: int
    mismatch_rate: float
    mean_abs_diff: float | None = None
    max_abs_diff: float | None = None
    mean_rel_diff: float | None = None
    live_history_rows: int = 0
    live_history_mismatches: int = 0
    example: dict[str, Any] | None = None

    @property
    def mismatch_rate_without_live_history(self) -> float:
        """The mismatch rate over the rows of users without live history."""
        rows = self.rows - self.live_history_rows
        return (self.mismatches - self.live_history_mismatches) / rows if rows else 0.0

    @property
    def unexpected_mismatch_rate(self) -> float:
        """The mismatch rate not explained by design: for ``retrieval_score``, over the rows
        of users without live history; for every other feature, over all rows."""
        if self.feature == RETRIEVAL:
            return self.mismatch_rate_without_live_history
        return self.mismatch_rate

    def to_json(self) -> dict[str, Any]:
        """The comparison as JSON-ready values."""
        out = asdict(self)
        out["mismatch_rate_without_live_history"] = self.mismatch_rate_without_live_history
        out["unexpected_mismatch_rate"] = self.unexpected_mismatch_rate
        return out


def _value(x: float) -> float | str:
    """A value for JSON: a finite float, else its name (``"nan"``, ``"inf"``)."""
    return float(x) if np.isfinite(x) else str(float(x))


def _rank(feature: FeatureSkew) -> tuple[float, float, str]:
    return (-feature.mismatch_rate, -(feature.max_abs_diff or 0.0), feature.feature)


@dataclass(frozen=True)
class SkewReport:
    """What :func:`skew_report` measured.

    Attributes:
        features: One comparison per feature, worst first (mismatch rate, then largest
            difference).
        requests: Logged requests compared.
        rows: Candidate rows compared.
        live_history_rows: Rows of users with live history; ``live_history_source`` says how
            that was known (``"log"`` or ``"store"``).
        versions: Requests compared per version.
        skipped: Requests not compared, per reason.
        bad_lines: ``file:line: problem`` of each unreadable log line (the others are
            compared).
        notes: Features left out, and why.
        atol, rtol: The tolerance.
        since: Only requests logged at or after this time were read (None: all).
    """

    features: list[FeatureSkew]
    requests: int
    rows: int
    live_history_rows: int = 0
    live_history_source: str = "store"
    versions: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    bad_lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    atol: float = ATOL
    rtol: float = RTOL
    since: datetime | None = None

    def worst(self, n: int | None = None) -> list[FeatureSkew]:
        """The ``n`` worst features (all by default), worst first."""
        ranked = sorted(self.features, key=_rank)
        return ranked if n is None else ranked[:n]

    def over(self, rate: float) -> list[FeatureSkew]:
        """The features whose :attr:`~FeatureSkew.unexpected_mismatch_rate` is over
        ``rate``, worst first."""
        return [f for f in self.worst() if f.unexpected_mismatch_rate > rate]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (features worst first)."""
        since = self.since.isoformat() if self.since else None
        return {**asdict(self), "since": since, "features": [f.to_json() for f in self.worst()]}


def compare_feature(
    name: str,
    online: np.ndarray,
    offline: np.ndarray,
    live: np.ndarray,
    keys: pl.DataFrame,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> FeatureSkew:
    """Compare one feature's online and offline values, row by row.

    Args:
        name: The feature.
        online: ``(N,)`` logged values.
        offline: ``(N,)`` recomputed values.
        live: ``(N,)`` bool, whether the row's user had live history.
        keys: ``N`` rows of ``request_id``, ``user_id``, ``item_id``, ``version`` (for the
            example).
        atol, rtol: The tolerance (see the module docs).
    """
    online = np.asarray(online, dtype=np.float64)
    offline = np.asarray(offline, dtype=np.float64)
    live = np.asarray(live, dtype=bool)
    with np.errstate(invalid="ignore"):
        diff = np.abs(online - offline)
        match = (diff <= atol + rtol * np.abs(offline)) | (online == offline)
    bad = ~(match | (np.isnan(online) & np.isnan(offline)))
    n, n_bad = len(online), int(bad.sum())
    out = FeatureSkew(
        feature=name,
        rows=n,
        mismatches=n_bad,
        mismatch_rate=n_bad / n if n else 0.0,
        live_history_rows=int(live.sum()),
        live_history_mismatches=int((bad & live).sum()),
    )
    if not n_bad:
        return out
    finite = bad & np.isfinite(diff)
    nonzero = finite & (offline != 0)
    # The example: the largest finite difference (else the first mismatch, NaN or inf).
    worst = int(np.flatnonzero(finite)[np.argmax(diff[finite])]) if finite.any() else 0
    worst = worst if finite.any() else int(np.flatnonzero(bad)[0])
    example = {k: keys.item(worst, k) for k in ("request_id", "user_id", "item_id", "version")}
    return replace(
        out,
        mean_abs_diff=float(diff[finite].mean()) if finite.any() else None,
        max_abs_diff=float(diff[worst]) if finite.any() else None,
        mean_rel_diff=float((diff[nonzero] / np.abs(offline[nonzero])).mean())
        if nonzero.any()
        else None,
        example={**example, "online": _value(online[worst]), "offline": _value(offline[worst])},
    )


def _version_meta(store: OnlineStore, workdir: Workdir, version: str) -> tuple[Any, bool]:
    """The version's metadata and whether the store still has it (None: nowhere)."""
    meta = store.get_meta(version)
    if meta is not None:
        return meta, True
    try:
        bundle, schemas = workdir.bundles_dir / version, (BUNDLE_SCHEMA_VERSION,)
        manifest = read_manifest(bundle, BUNDLE_ARTIFACT, schemas, workdir.command("publish"))
    except ArtifactError:
        return None, False
    return manifest.extra, False


def _positions(
    store: OnlineStore, version: str, kind: str, column: pl.Series
) -> tuple[np.ndarray, np.ndarray]:
    """The version's vectors of ``kind`` for the distinct ids of ``column``, and each row's
    row of them (-1: no vector)."""
    ids = column.unique(maintain_order=True).to_list()
    parts, found = [], []
    for start in range(0, len(ids), _CHUNK):
        vectors, hit = store.get_vectors(version, kind, ids[start : start + _CHUNK])
        parts.append(vectors)
        found.append(hit)
    dims = {p.shape[1] for p in parts if p.shape[1]}
    dim = dims.pop() if len(dims) == 1 else 0
    matrix = np.vstack([p if p.shape[1] else np.zeros((len(p), dim), np.float32) for p in parts])
    keys = pl.DataFrame(
        {"_id": ids, "_pos": np.arange(len(ids))}, schema_overrides={"_id": pl.String}
    )
    keys = keys.filter(pl.Series(np.concatenate(found)))
    rows = column.to_frame("_id").join(keys, on="_id", how="left", maintain_order="left")
    return matrix, rows.get_column("_pos").fill_null(-1).to_numpy()


def _version_rows(
    requests: pl.DataFrame,
    part: pl.DataFrame,
    snapshot: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    store: OnlineStore,
    version: str,
    n_categories: int,
    embeddings: bool,
) -> pl.DataFrame:
    """One version's logged rows ``part`` with their keys (``request_id``, ``user_id``,
    ``item_id``, ``version``) and ``offline:<feature>`` recomputed (``retrieval_score`` null
    without the version's ``embeddings``)."""
    at = part.get_column("request")
    cands = pl.DataFrame(
        {
            "request_id": requests.get_column("request_id").gather(at),
            "user_id": requests.get_column("user_id").gather(at),
            "item_id": part.get_column("item_id"),
            "version": pl.Series([version] * part.height, dtype=pl.String),
            "_scored_at": requests.get_column("scored_at").gather(at),
            "_device": requests.get_column("device").gather(at),
        }
    )
    raw = snapshot_candidate_counters(cands, snapshot, pl.col("_scored_at"), pl.col("_device"))
    empty = np.zeros((0, 0), dtype=np.float32)
    users, items = empty, empty
    user_idx = item_idx = np.full(cands.height, -1, dtype=np.int64)
    if embeddings:
        users, user_idx = _positions(store, version, USER_EMB, cands.get_column("user_id"))
        items, item_idx = _positions(store, version, ITEM_EMB, cands.get_column("item_id"))
    raw = raw.with_columns(
        pl.Series("user_idx", user_idx).replace(-1, None),
        pl.Series("item_idx", item_idx).replace(-1, None),
    )
    matrix = feature_matrix(raw, users, items, n_categories)
    offline = pl.DataFrame({f"offline:{n}": matrix[:, j] for j, n in enumerate(FEATURES)})
    if not embeddings:
        offline = offline.with_columns(pl.lit(None, pl.Float64).alias(f"offline:{RETRIEVAL}"))
    logged = part.drop("request", "item_id").get_columns()
    return cands.drop("_scored_at", "_device").hstack([*logged, *offline.get_columns()])


def _live_flags(store: OnlineStore, requests: pl.DataFrame) -> tuple[np.ndarray, str]:
    """Per request, whether its user had live history, and where that was read."""
    logged = requests.get_column("live_history")
    if logged.null_count() == 0:
        return logged.to_numpy().astype(bool), "log"
    users = requests.filter(logged.is_null()).get_column("user_id").unique().to_list()
    having: set[str] = set()
    for start in range(0, len(users), _CHUNK):
        chunk = users[start : start + _CHUNK]
        histories = store.get_histories(chunk, 1)
        having.update(u for u, h in zip(chunk, histories, strict=True) if h)
    from_store = requests.get_column("user_id").is_in(list(having))
    flags = logged.fill_null(from_store).to_numpy().astype(bool)
    return flags, "store" if logged.null_count() == len(logged) else "log, else store"


def skew_report(
    workdir: Workdir,
    store: OnlineStore,
    since: datetime | None = None,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    feature_log: FeatureLog | None = None,
) -> SkewReport:
    """Recompute the logged feature rows offline and compare them per feature (see the
    module docs).

    Args:
        workdir: The work directory (feature log, event log, catalog, bundles).
        store: The online store the service read (versions' metadata and embeddings, users'
            live histories).
        since: Compare only requests logged at or after this time (naive: UTC).
        atol, rtol: A row mismatches when ``|online - offline| > atol + rtol * |offline|``.
        feature_log: A log already read (``since`` is not applied to it); default:
            :func:`read_feature_log` of ``WORKDIR/featurelog`` since ``since``.

    Raises:
        DataError: there is no feature log.
        ArtifactError: the catalog is missing.
    """
    since = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    flog = feature_log or read_feature_log(workdir.featurelog_dir, since)
    live, live_source = _live_flags(store, flog.requests)
    requests = flog.requests.with_columns(pl.Series("_live", live, dtype=pl.Boolean))
    skipped: Counter[str] = Counter()
    notes = [f"{n}: logged, but not a feature this code computes" for n in flog.names
             if n not in FEATURES]  # fmt: skip
    names = [n for n in FEATURES if n in flog.names]
    notes += [f"{n}: not in the log" for n in FEATURES if n not in flog.names and flog.names]
    if empty := int((requests.get_column("n_items") == 0).sum()):
        skipped[NO_CANDIDATES] = empty
    _, catalog, _ = read_catalog(workdir)
    parts, versions = [], {}
    event_log = EventLog(workdir.events_dir)
    with event_log.reading():  # no compaction removes a file while it is read
        events = event_log.scan()
        snapshots: dict[datetime, tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]] = {}
        scored = requests.with_row_index("request").filter(pl.col("n_items") > 0)
        for (version,), group in scored.group_by("version", maintain_order=True):
            meta, in_store = _version_meta(store, workdir, str(version))
            reason = UNKNOWN_VERSION if meta is None else None
            if meta is not None and not {"snapshot_time", "n_categories"} <= meta.keys():
                reason = BAD_META
            if reason is not None:
                skipped[reason] += group.height
                continue
            cutoff = datetime.fromisoformat(meta["snapshot_time"])
            if cutoff not in snapshots:
                snapshots[cutoff] = snapshot_counters(events, catalog, cutoff)
            part = flog.rows.filter(pl.col("request").is_in(group["request"].implode()))
            n_categories = int(meta["n_categories"])
            parts.append(
                _version_rows(
                    requests, part, snapshots[cutoff], store, str(version), n_categories, in_store
                ).with_columns(_live=requests.get_column("_live").gather(part["request"]))
            )
            versions[str(version)] = group.height
            if not in_store and RETRIEVAL in names:
                notes.append(f"{RETRIEVAL}: not compared for {version} (no longer in the store)")
    rows = pl.concat(parts, how="diagonal") if parts else pl.DataFrame()
    features = []
    for name in names if parts else []:
        both = rows.filter(pl.col(name).is_not_null() & pl.col(f"offline:{name}").is_not_null())
        if both.height:
            features.append(
                compare_feature(
                    name,
                    both.get_column(name).to_numpy(),
                    both.get_column(f"offline:{name}").to_numpy(),
                    both.get_column("_live").to_numpy(),
                    both,
                    atol,
                    rtol,
                )
            )
    return SkewReport(
        features=sorted(features, key=_rank),
        requests=sum(versions.values()),
        rows=rows.height,
        live_history_rows=int(rows.get_column("_live").sum()) if parts else 0,
        live_history_source=live_source,
        versions=versions,
        skipped=dict(skipped),
        bad_lines=flog.errors,
        notes=notes,
        atol=atol,
        rtol=rtol,
        since=since,
    )
