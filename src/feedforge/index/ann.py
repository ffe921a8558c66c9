"""An approximate nearest-neighbour (ANN) index over item embeddings, for maximum inner product.

(Over 400 lines on purpose: one class, and the design notes and measurements below, which say
why it is built the way it is, belong beside it.)

Retrieval scores item ``i`` for a query ``q`` (the user vector) with ``V[i] · q``. Exact search
is one ``(N, D) @ (D,)`` product per request: O(N·D), tens of milliseconds at a million items.
:class:`AnnIndex` answers the same question from an HNSW graph (faiss ``IndexHNSWFlat``) in a
few thousand distance computations, and keeps the exact search as a fallback.

**Why a MIPS -> L2 reduction, not HNSW on inner products.** HNSW is built for metric spaces;
the inner product is not a metric (an item is not its own best match, and the largest-norm
items are near to everything). A graph built with ``METRIC_INNER_PRODUCT`` fills its neighbour
lists with those large-norm "hubs": it finds the very top quickly, but cannot walk the local
neighbourhoods that a few hundred candidates span. On clustered data with mildly varying norms
(100k x 64) it reached recall@500 0.55 at ``efSearch=500``, against 0.88 for the reduction used
here (Bachrach et al., 2014)::

    x' = [x, sqrt(M^2 - |x|^2)]     (M = the largest item norm)
    q' = [q, 0]
    |q' - x'|^2 = |q|^2 + M^2 - 2 q·x

Every ``x'`` lies on the sphere of radius ``M``, so the graph is built in a true metric space,
and the L2 nearest neighbours of ``q'`` are exactly the items of largest inner product.

**But the reduction is not always the better graph.** When the item norms spread widely
(matrix-factorisation embeddings: on ml-latest-small iALS item norms range 0 to 2.2 with a
median of 0.26), nearly every reduced vector sits close to the pole ``[0, M]`` and the graph
cannot tell the items apart: recall@200 was 0.66 at ``efSearch=1024``, against 0.9999 for a
graph built on the inner products directly. So ``metric="auto"`` (the publish default) builds
the reduction first, measures its recall@k against exact search on a sample of real queries
(the users' vectors), and when that is below ``auto_min_recall`` also builds the
inner-product graph and keeps whichever recalls more. The chosen metric is saved with the
index; both search the same way from the caller's side.

**Scores** are always the exact inner products ``V[i] · q``, recomputed from the item matrix for
the returned ids (recovering them from L2 distances would subtract nearly equal numbers), and
each row is re-sorted by them. Missing results are padded with id ``-1`` and score ``-inf``.

**efSearch.** faiss does not widen the search beam to ``k``: with ``efSearch < k`` the tail of
the answer is whatever the beam happened to visit. :meth:`AnnIndex.search` therefore searches
with ``max(ef_search, k)``. A beam of just ``k`` is still too narrow for a few hundred
candidates, hence the serving default ``serving.ann_ef_search = 1024``.

**Measured** (1M x 64 clustered float32 with mildly varying norms, m=32, ef_construction=200,
2 cores shared with other jobs): build 4.7-6.8 min, +525 MiB resident (graph and reduced
vectors; 507 MiB on disk). One query with efSearch 1024: p50 about 2 ms, p99 about 4 ms,
recall@200 0.95 and recall@500 0.93 (efSearch 2048: 4.4 ms, 0.99 / 0.98); the exact numpy
search took 17-40 ms. Below roughly 50k items the exact search is the faster one.

**Threads.** faiss parallelises the graph construction over items and a batched search over
queries (OpenMP); one query runs on the calling thread only, so a serving process with one
request per thread never oversubscribes the cores. :func:`configure_threads` sizes the OpenMP
pool to the cores this process may use; :meth:`AnnIndex.build` calls it.

A saved index is a directory::

    index.faiss     faiss.write_index of the IndexHNSWFlat (faiss's own format, no pickle);
                    absent for kind "exact", whose index is the item matrix itself
    manifest.json   artifact "ann-index": parameters, the SHA-256 of the item matrix the index
                    was built from and of index.faiss (checked at load)
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from feedforge.artifacts import Manifest, read_manifest, write_manifest
from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.index.exact import top_k

logger = logging.getLogger(__name__)

AnnKind = Literal["hnsw", "exact"]
AnnMetric = Literal["l2-reduction", "inner-product"]
RetrievalMethod = Literal["hnsw", "exact", "exact-fallback"]
AUTO_PROBES = 512  # queries sampled to measure recall for metric="auto"

ANN_ARTIFACT = "ann-index"
ANN_SCHEMA_VERSION = 1
INDEX_FILE = "index.faiss"
BUILD_COMMAND = "feedforge publish"
MAX_OVERFETCH = 1_024
"""At most this many results beyond the ``n`` wanted are fetched to make up for excluded items;
when the excluded items still eat into the ``n``, the request falls back to exact search."""
_CHUNK_FLOATS = 1 << 24  # bound on the temporary (B, N) and (B, k, D) arrays: 64 MiB


@dataclass(frozen=True)
class AnnParams:
    """How an index was built.

    Attributes:
        kind: ``"hnsw"`` or ``"exact"`` (brute force over the item matrix).
        m: HNSW graph degree (links per node; layer 0 has ``2 * m``).
        ef_construction: HNSW beam width while inserting items.
        ef_search: Default HNSW beam width while searching (raised to ``k`` per search).
        seed: Seed of the HNSW level assignment (``None``: faiss's fixed default). Builds on
            more than one thread are not bit-reproducible even with a seed.
        max_norm: ``M`` of the MIPS -> L2 reduction (the largest item norm).
        metric: The graph's space: ``"l2-reduction"`` (``D + 1`` dimensions, L2) or
            ``"inner-product"`` (``D`` dimensions, faiss ``METRIC_INNER_PRODUCT``).
        probe_recall: For ``metric="auto"`` builds: recall@k of each metric tried on the
            probe queries (e.g. ``{"l2-reduction": 0.66, "inner-product": 0.99}``).
    """

    kind: AnnKind
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    seed: int | None = None
    max_norm: float = 0.0
    metric: AnnMetric = "l2-reduction"
    probe_recall: dict[str, float] | None = None


@dataclass(frozen=True)
class Retrieval:
    """The candidates of one request, best first.

    Attributes:
        ids: ``(n,)`` int64 item indices.
        scores: ``(n,)`` float32 exact inner products.
        method: ``"hnsw"``, ``"exact"`` (the index is exact) or ``"exact-fallback"`` (an HNSW
            index, but this request needed the exact search).
    """

    ids: np.ndarray
    scores: np.ndarray
    method: RetrievalMethod


def configure_threads(n: int | None = None) -> int:
    """Size faiss's OpenMP pool: ``n``, or every core this process may use.

    The cores are counted from the CPU affinity mask and a cgroup v2 quota (a container
    limited to 2 CPUs on a 64-core host gets 2 threads, not 64).

    Returns:
        The number of threads set.
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    available = available or os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            available = min(available, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    threads = available if n is None else max(1, min(n, available))
    faiss.omp_set_num_threads(threads)
    return threads


def _as_matrix(item_matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(item_matrix)
    if matrix.ndim != 2:
        raise ValidationError(f"item_matrix must be 2-D (N, D), got shape {matrix.shape}")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _sha256(data: np.ndarray | Path) -> str:
    digest = hashlib.sha256()
    if isinstance(data, Path):
        with data.open("rb") as fh:
            while block := fh.read(1 << 24):
                digest.update(block)
    else:
        digest.update(np.ascontiguousarray(data).data)
    return digest.hexdigest()


def _pad(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen ``(B, k')`` results to ``(B, k)`` with id -1 and score -inf."""
    out_ids = np.full((ids.shape[0], k), -1, dtype=np.int64)
    out_scores = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    out_ids[:, : ids.shape[1]] = ids
    out_scores[:, : ids.shape[1]] = scores
    return out_ids, out_scores


class AnnIndex:
    """Top-``k`` inner-product search over a fixed ``(N, D)`` item matrix.

    Create it with :meth:`build` or :meth:`load`, never directly. It keeps a reference to the
    item matrix (for exact scores and the exact fallback); the HNSW graph holds its own copy of
    the ``(N, D + 1)`` reduced vectors.

    Example::

        index = AnnIndex.build(item_matrix, kind="hnsw", seed=0)
        ids, scores = index.search(user_vectors, k=100)   # (B, 100) each
        index.save(bundle / "ann")
        same = AnnIndex.load(bundle / "ann", item_matrix)
    """

    def __init__(
        self,
        matrix: np.ndarray,
        params: AnnParams,
        index: faiss.Index | None,
        matrix_sha256: str | None = None,
    ) -> None:
        self._matrix = matrix
        self.params = params
        self._index = index
        self._matrix_sha256 = matrix_sha256
        self.ef_search = params.ef_search
        self._params_by_ef: dict[int, Any] = {}

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        item_matrix: np.ndarray,
        kind: AnnKind = "hnsw",
        m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        seed: int | None = None,
        metric: AnnMetric | Literal["auto"] = "l2-reduction",
        probe_queries: np.ndarray | None = None,
        probe_k: int = 200,
        auto_min_recall: float = 0.95,
    ) -> AnnIndex:
        """Index ``item_matrix`` (``(N, D)`` float32; other dtypes are converted).

        Args:
            item_matrix: The item embeddings.
            kind: ``"hnsw"`` or ``"exact"``.
            m: HNSW links per node.
            ef_construction: HNSW beam width while building.
            ef_search: Default HNSW beam width while searching.
            seed: HNSW level-assignment seed.
            metric: The graph's space, or ``"auto"`` (see the module docs; needs
                ``probe_queries``).
            probe_queries: ``(B, D)`` real queries for ``"auto"`` (at most
                :data:`AUTO_PROBES` of them are used, chosen with a fixed seed).
            probe_k: The recall depth ``"auto"`` measures (the serving candidate count).
            auto_min_recall: ``"auto"`` keeps the reduction when its recall reaches this.

        Raises:
            ValidationError: the matrix is not 2-D, an unknown kind or metric, a parameter
                below 1, or ``"auto"`` without probe queries.
            DataError: an HNSW index over embeddings that hold NaN or infinity.
        """
        matrix = _as_matrix(item_matrix)
        if kind not in ("hnsw", "exact"):
            raise ValidationError(f"unknown ANN kind {kind!r}; expected 'hnsw' or 'exact'")
        if metric not in ("auto", "l2-reduction", "inner-product"):
            raise ValidationError(
                f"unknown ANN metric {metric!r}; expected auto, l2-reduction or inner-product"
            )
        if min(m, ef_construction, ef_search) < 1:
            raise ValidationError("m, ef_construction and ef_search must be at least 1")
        if kind == "exact":
            return cls(matrix, AnnParams("exact", m, ef_construction, ef_search, seed), None)
        if not np.isfinite(matrix).all():
            raise DataError("item embeddings hold NaN or infinite values; cannot build HNSW")
        configure_threads()
        if metric != "auto":
            return cls._graph(matrix, metric, m, ef_construction, ef_search, seed)
        if probe_queries is None or len(probe_queries) == 0:
            raise ValidationError("metric 'auto' needs probe_queries (e.g. the user vectors)")
        probes = _as_matrix(probe_queries)
        if len(probes) > AUTO_PROBES:
            rng = np.random.default_rng(0)
            probes = probes[np.sort(rng.choice(len(probes), AUTO_PROBES, replace=False))]
        recalls: dict[str, float] = {}
        best: AnnIndex | None = None
        for candidate in ("l2-reduction", "inner-product"):
            index = cls._graph(matrix, candidate, m, ef_construction, ef_search, seed)
            recalls[candidate] = recall_at_k_vs_exact(index, matrix, probes, probe_k)
            if best is None or recalls[candidate] > recalls[best.params.metric]:
                best = index
            if recalls[candidate] >= auto_min_recall:
                break
        assert best is not None  # the loop ran at least once
        best.params = replace(best.params, probe_recall=recalls)
        return best

    @classmethod
    def _graph(
        cls,
        matrix: np.ndarray,
        metric: AnnMetric,
        m: int,
        ef_construction: int,
        ef_search: int,
        seed: int | None,
    ) -> AnnIndex:
        """One HNSW graph over ``matrix`` in the given space."""
        norms2 = np.einsum("nd,nd->n", matrix, matrix, dtype=np.float64)
        max_norm = float(np.sqrt(norms2.max())) if len(norms2) else 0.0
        if metric == "l2-reduction":
            extra = np.sqrt(np.maximum(max_norm**2 - norms2, 0.0)).astype(np.float32)
            vectors = np.ascontiguousarray(np.hstack([matrix, extra[:, None]]))
            index = faiss.IndexHNSWFlat(matrix.shape[1] + 1, m, faiss.METRIC_L2)
        else:
            vectors = matrix
            index = faiss.IndexHNSWFlat(matrix.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        if seed is not None:
            index.hnsw.rng = faiss.RandomGenerator(seed)  # type: ignore[attr-defined]
        index.add(vectors)
        params = AnnParams("hnsw", m, ef_construction, ef_search, seed, max_norm, metric)
        return cls(matrix, params, index)

    @classmethod
    def exact(cls, item_matrix: np.ndarray) -> AnnIndex:
        """The brute-force index (no graph): exactly today's ``item_matrix @ query``."""
        return cls.build(item_matrix, kind="exact")

    # -- properties -----------------------------------------------------------------------
    @property
    def kind(self) -> AnnKind:
        return self.params.kind

    @property
    def n_items(self) -> int:
        return int(self._matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

    # -- search ---------------------------------------------------------------------------
    def _queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValidationError(f"queries must be (B, {self.dim}), got shape {q.shape}")
        if k < 1:
            raise ValidationError(f"k must be at least 1, got {k}")
        return np.ascontiguousarray(q, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items of largest inner product per query (approximate for HNSW).

        Args:
            queries: ``(B, D)`` query vectors.
            k: Results per query; rows are padded when the index returns fewer.

        Returns:
            ``(B, k)`` int64 item indices (``-1`` = padding) and ``(B, k)`` float32 exact
            inner products (``-inf`` = padding), best first.
        """
        q = self._queries(queries, k)
        if self._index is None or self.n_items == 0:
            return self.exact_search(q, k)
        k_eff = min(k, self.n_items)
        params = self._search_params(max(self.ef_search, k_eff))
        step = max(1, _CHUNK_FLOATS // (k_eff * self.dim))
        ids_out, scores_out = [], []
        for start in range(0, len(q), step):
            chunk = q[start : start + step]
            if self.params.metric == "l2-reduction":
                chunk_in = np.hstack([chunk, np.zeros((len(chunk), 1), dtype=np.float32)])
            else:
                chunk_in = chunk
            _, labels = self._index.search(chunk_in, k_eff, params=params)
            ids = labels.astype(np.int64)
            valid = ids >= 0
            scores = np.einsum("bkd,bd->bk", self._matrix[np.where(valid, ids, 0)], chunk)
            scores = np.where(valid, scores, -np.inf).astype(np.float32)
            order = np.argsort(-scores, axis=1, kind="stable")
            ids_out.append(np.take_along_axis(ids, order, axis=1))
            scores_out.append(np.take_along_axis(scores, order, axis=1))
        return _pad(np.vstack(ids_out), np.vstack(scores_out), k)

    def _search_params(self, ef: int) -> Any:
        """faiss search parameters for beam ``ef``, made once per beam (read-only in a search,
        so threads may share them)."""
        params = self._params_by_ef.get(ef)
        if params is None:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = ef
            self._params_by_ef[ef] = params
        return params

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force :meth:`search` (numpy ``queries @ item_matrix.T``), same shapes."""
        q = self._queries(queries, k)
        k_eff = min(k, self.n_items)
        if k_eff == 0:
            return _pad(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        step = max(1, _CHUNK_FLOATS // self.n_items)
        parts = [top_k(q[s : s + step] @ self._matrix.T, k_eff) for s in range(0, len(q), step)]
        return _pad(np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts]), k)

    def retrieve(self, query: np.ndarray, n: int, exclude: Any = ()) -> Retrieval:
        """The best ``n`` items for one query, without the ``exclude`` ones (the serving path).

        HNSW over-fetches ``n`` plus the number of excluded items (at most
        :data:`MAX_OVERFETCH` more), drops the excluded ones and keeps the best ``n``. The
        exact search answers instead when the index is exact, when the over-fetch would cover
        the whole catalog, or when fewer than ``n`` items survive the filter. The exact path is
        ``scores = item_matrix @ query``, excluded and non-finite scores dropped, top ``n``.

        Args:
            query: ``(D,)`` query vector.
            n: Items wanted; fewer come back only when fewer than ``n`` are left.
            exclude: Item indices in ``[0, N)`` never to return.
        """
        q = np.asarray(query, dtype=np.float32)
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        method: RetrievalMethod = "exact"
        if self._index is not None and np.isfinite(q).all():
            method = "exact-fallback"
            need = min(n, self.n_items - len(excluded))
            fetch = need + min(len(excluded), MAX_OVERFETCH)
            if need > 0 and fetch < self.n_items:
                ids, scores = self.search(q[None, :], fetch)
                keep = (ids[0] >= 0) & ~np.isin(ids[0], excluded)
                if keep.sum() >= need:
                    return Retrieval(ids[0][keep][:need], scores[0][keep][:need], "hnsw")
        scores = self._matrix @ q
        scores[excluded] = -np.inf
        n_cand = min(n, int(np.isfinite(scores).sum()))
        if n_cand == 0:
            return Retrieval(np.zeros(0, np.int64), np.zeros(0, np.float32), method)
        cand, cand_scores = top_k(scores[None, :], n_cand)
        return Retrieval(cand[0], cand_scores[0], method)

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the index into ``directory`` (see the module docs for the layout)."""
        directory.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {
            **asdict(self.params),
            "dim": self.dim,
            "matrix_sha256": self._matrix_sha256 or _sha256(self._matrix),
            "faiss_version": faiss.__version__,
            "index_file": None,
            "index_sha256": None,
        }
        if self._index is not None:
            path = directory / INDEX_FILE
            tmp = directory / f".{INDEX_FILE}.tmp"
            faiss.write_index(self._index, str(tmp))
            os.replace(tmp, path)
            extra.update(index_file=INDEX_FILE, index_sha256=_sha256(path))
        write_manifest(
            directory,
            Manifest(
                artifact=ANN_ARTIFACT,
                schema_version=ANN_SCHEMA_VERSION,
                counts={"items": self.n_items},
                extra=extra,
            ),
        )

    @classmethod
    def load(
        cls, directory: Path, item_matrix: np.ndarray, ef_search: int | None = None
    ) -> AnnIndex:
        """Read an index saved by :meth:`save`, for the same ``(N, D)`` item matrix.

        Args:
            directory: The index directory.
            item_matrix: The item embeddings the index was built from.
            ef_search: Search beam width to use instead of the saved one.

        Raises:
            ArtifactError: the directory, manifest or index file is missing or corrupt, or
                the index was built from another item matrix. The message names the path.
        """
        manifest = read_manifest(directory, ANN_ARTIFACT, (ANN_SCHEMA_VERSION,), BUILD_COMMAND)
        where = directory / "manifest.json"
        extra = manifest.extra
        optional: dict[str, Any] = {"metric": "l2-reduction", "probe_recall": None}  # older
        try:
            values: dict[str, Any] = {
                f.name: extra[f.name]
                if f.name not in optional
                else extra.get(f.name, optional[f.name])
                for f in fields(AnnParams)
            }
            params = AnnParams(**values)
            if params.metric not in ("l2-reduction", "inner-product"):
                raise TypeError(f"unknown metric {params.metric!r}")
        except (KeyError, TypeError) as exc:
            raise ArtifactError(where, f"corrupt ANN manifest ({exc!r})", BUILD_COMMAND) from exc
        matrix = _as_matrix(item_matrix)
        shape = (int(matrix.shape[0]), int(matrix.shape[1]))
        built_for = (manifest.counts.get("items"), extra.get("dim"))
        if built_for != shape:
            raise ArtifactError(
                where,
                f"ANN index built for {built_for[0]} x {built_for[1]} items, "
                f"the version has {shape[0]} x {shape[1]}",
                BUILD_COMMAND,
            )
        digest = _sha256(matrix)
        if extra.get("matrix_sha256") != digest:
            raise ArtifactError(where, "ANN index built from other item embeddings", BUILD_COMMAND)
        index: faiss.Index | None = None
        if params.kind == "hnsw":
            path = directory / str(extra.get("index_file") or INDEX_FILE)
            if not path.is_file():
                raise ArtifactError(path, "missing ANN index file", BUILD_COMMAND)
            if _sha256(path) != extra.get("index_sha256"):
                raise ArtifactError(path, "corrupt ANN index (checksum mismatch)", BUILD_COMMAND)
            try:
                index = faiss.read_index(str(path))
            except RuntimeError as exc:  # e.g. written by a newer faiss
                raise ArtifactError(path, f"unreadable ANN index ({exc})", BUILD_COMMAND) from exc
            want = (shape[0], shape[1] + (1 if params.metric == "l2-reduction" else 0))
            if not isinstance(index, faiss.IndexHNSWFlat) or (index.ntotal, index.d) != want:
                raise ArtifactError(path, "ANN index does not match its manifest", BUILD_COMMAND)
        loaded = cls(matrix, params, index, matrix_sha256=digest)
        if ef_search is not None:
            loaded.ef_search = ef_search
        return loaded


def load_or_exact(
    directory: Path, item_matrix: np.ndarray, ef_search: int | None = None
) -> AnnIndex:
    """:meth:`AnnIndex.load`, or the exact index (with a logged warning) when that fails.

    A missing or corrupt index costs latency, never availability: the exact search answers
    every query the index would have.
    """
    try:
        return AnnIndex.load(directory, item_matrix, ef_search=ef_search)
    except ArtifactError as exc:
        logger.warning("ANN index unusable, serving with exact search: %s", exc.message)
        return AnnIndex.exact(item_matrix)


def recall_at_k_vs_exact(index: AnnIndex, matrix: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of each query's exact top-``k`` (over ``matrix``) that ``index`` returns.

    Args:
        index: The index under test.
        matrix: ``(N, D)`` the item matrix the index was built from.
        queries: ``(B, D)`` query vectors.
        k: Cut-off (clipped to ``N``).
    """
    truth, _ = AnnIndex.exact(matrix).exact_search(queries, k)
    found, _ = index.search(queries, k)
    k_eff = min(k, np.asarray(matrix).shape[0])
    if k_eff == 0 or len(truth) == 0:
        return 1.0
    hits = [
        len(np.intersect1d(t[:k_eff], f[f >= 0], assume_unique=True))
        for t, f in zip(truth, found, strict=True)
    ]
    return float(np.mean(hits) / k_eff)
