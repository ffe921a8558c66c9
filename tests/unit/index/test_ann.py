"""The ANN index: exact equivalence, HNSW recall, padding, persistence, fallbacks, retrieval."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.index.ann import (
    INDEX_FILE,
    MAX_OVERFETCH,
    AnnIndex,
    configure_threads,
    load_or_exact,
    recall_at_k_vs_exact,
)
from feedforge.index.exact import top_k


def clustered(n: int, d: int, seed: int, n_clusters: int = 64) -> np.ndarray:
    """Points around random cluster centres, with mildly varying norms (like MF embeddings)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((n_clusters, d))
    x = centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, d))
    x *= rng.lognormal(0.0, 0.25, (n, 1))
    return x.astype(np.float32)


def brute_force(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ matrix.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """20,000 x 32 items and 200 queries from the same clusters."""
    return clustered(20_000, 32, seed=1), clustered(200, 32, seed=2)


@pytest.fixture(scope="module")
def hnsw(data: tuple[np.ndarray, np.ndarray]) -> AnnIndex:
    """An HNSW index with the shipped defaults (m=32, ef_construction=200, ef_search=128)."""
    return AnnIndex.build(data[0], kind="hnsw", seed=0)


@pytest.fixture
def small() -> np.ndarray:
    return clustered(60, 8, seed=3, n_clusters=4)


# -- search --------------------------------------------------------------------------------


def test_exact_kind_returns_the_brute_force_ids_and_scores(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    matrix, queries = data
    index = AnnIndex.build(matrix, kind="exact")
    ids, scores = index.search(queries, 50)
    want_ids, want_scores = brute_force(matrix, queries, 50)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_hnsw_recall_at_10_vs_exact_is_at_least_095(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    matrix, queries = data
    assert recall_at_k_vs_exact(hnsw, matrix, queries, 10) >= 0.95
    exact = AnnIndex.exact(matrix)
    assert recall_at_k_vs_exact(exact, matrix, queries, 10) == 1.0


def test_hnsw_scores_are_exact_inner_products_best_first(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    matrix, queries = data
    ids, scores = hnsw.search(queries[:20], 100)
    assert ids.shape == scores.shape == (20, 100)
    assert (ids >= 0).all()
    assert all(len(set(row)) == 100 for row in ids.tolist())
    np.testing.assert_allclose(
        scores, np.einsum("bkd,bd->bk", matrix[ids], queries[:20]), rtol=1e-5, atol=1e-4
    )
    assert (np.diff(scores, axis=1) <= 0).all()


def test_k_beyond_the_beam_width_still_finds_the_top_items(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """faiss does not widen efSearch to k by itself; without the widening recall collapses."""
    matrix, queries = data
    assert hnsw.ef_search == 128
    assert recall_at_k_vs_exact(hnsw, matrix, queries[:50], 500) >= 0.85  # 0.57 unwidened


@pytest.mark.parametrize("kind", ["hnsw", "exact"])
def test_k_above_the_catalog_is_padded_with_minus_one(kind: str, small: np.ndarray) -> None:
    index = AnnIndex.build(small, kind=kind, m=8, seed=0)  # type: ignore[arg-type]
    ids, scores = index.search(small[:3], 80)
    assert ids.shape == scores.shape == (3, 80)
    np.testing.assert_array_equal(ids[:, 60:], -1)
    assert np.isneginf(scores[:, 60:]).all()
    for row in ids:
        assert sorted(row[:60].tolist()) == list(range(60))  # every item exactly once
    assert recall_at_k_vs_exact(index, small, small[:3], 80) == 1.0


def test_an_empty_catalog_answers_only_padding() -> None:
    index = AnnIndex.build(np.zeros((0, 4), np.float32), kind="hnsw")
    ids, scores = index.search(np.ones((2, 4), np.float32), 3)
    np.testing.assert_array_equal(ids, -1)
    assert np.isneginf(scores).all()
    assert len(index.retrieve(np.ones(4, np.float32), 3).ids) == 0


def test_bad_input_is_rejected_at_the_boundary(small: np.ndarray) -> None:
    with pytest.raises(ValidationError, match="2-D"):
        AnnIndex.build(small[0])
    with pytest.raises(ValidationError, match="unknown ANN kind"):
        AnnIndex.build(small, kind="lsh")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at least 1"):
        AnnIndex.build(small, m=0)
    bad = small.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        AnnIndex.build(bad, kind="hnsw")
    index = AnnIndex.exact(small)
    with pytest.raises(ValidationError, match=r"\(B, 8\)"):
        index.search(small[:, :4], 5)
    with pytest.raises(ValidationError, match="k must be"):
        index.search(small, 0)


def test_configure_threads_stays_within_the_available_cores() -> None:
    available = configure_threads()
    assert available >= 1
    assert configure_threads(1) == 1
    assert configure_threads(10_000) == available


# -- retrieve (the serving path) -----------------------------------------------------------


def old_serving_candidates(matrix: np.ndarray, query: np.ndarray, n: int, seen: list[int]):  # type: ignore[no-untyped-def]
    """The exact candidate retrieval of FeedService.recommend before the ANN index."""
    scores = matrix @ query
    scores[seen] = -np.inf
    n_cand = min(n, int(np.isfinite(scores).sum()))
    cand, cand_scores = top_k(scores[None, :], n_cand)
    return cand[0], cand_scores[0]


def test_exact_retrieve_is_the_old_serving_code(data: tuple[np.ndarray, np.ndarray]) -> None:
    matrix, queries = data
    index = AnnIndex.exact(matrix)
    seen = [5, 17, 19_999, 42, 5]
    for query in queries[:5]:
        got = index.retrieve(query, 200, exclude=seen)
        want_ids, want_scores = old_serving_candidates(matrix, query, 200, seen)
        assert got.method == "exact"
        np.testing.assert_array_equal(got.ids, want_ids)
        np.testing.assert_array_equal(got.scores, want_scores)


def test_hnsw_retrieve_over_fetches_and_drops_excluded_items(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    matrix, queries = data
    query = queries[0]
    exact_top, _ = brute_force(matrix, query[None, :], 300)
    excluded = exact_top[0, ::2][:100]  # half of the true top 200
    got = hnsw.retrieve(query, 200, exclude=excluded)
    assert got.method == "hnsw"
    assert len(got.ids) == len(set(got.ids.tolist())) == 200
    assert not set(got.ids.tolist()) & set(excluded.tolist())
    want, _ = old_serving_candidates(matrix, query, 200, excluded.tolist())
    assert len(set(got.ids.tolist()) & set(want.tolist())) >= 0.9 * 200
    assert (np.diff(got.scores) <= 0).all()


def test_hnsw_retrieve_falls_back_to_exact_when_too_few_survive(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """The over-fetch is capped: excluding the whole true top 2,000 leaves nothing to keep."""
    matrix, queries = data
    query = queries[1]
    excluded = brute_force(matrix, query[None, :], 10 + MAX_OVERFETCH + 500)[0][0]
    got = hnsw.retrieve(query, 10, exclude=excluded)
    assert got.method == "exact-fallback"
    want_ids, want_scores = old_serving_candidates(matrix, query, 10, excluded.tolist())
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_array_equal(got.scores, want_scores)


def test_retrieve_returns_everything_left_when_fewer_than_n_remain(small: np.ndarray) -> None:
    index = AnnIndex.build(small, kind="hnsw", m=8, seed=0)
    got = index.retrieve(small[0], 100, exclude=range(50))
    assert got.method == "exact-fallback"  # fetching the whole catalog is an exact search
    assert sorted(got.ids.tolist()) == list(range(50, 60))
    assert len(index.retrieve(small[0], 5, exclude=range(60)).ids) == 0


# -- persistence ---------------------------------------------------------------------------


def test_save_and_load_round_trip(
    hnsw: AnnIndex, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    matrix, queries = data
    hnsw.save(tmp_path / "ann")
    assert (tmp_path / "ann" / INDEX_FILE).is_file()
    manifest = json.loads((tmp_path / "ann" / "manifest.json").read_text())
    assert manifest["artifact"] == "ann-index"
    assert manifest["extra"]["kind"] == "hnsw"
    assert (manifest["extra"]["m"], manifest["extra"]["ef_construction"]) == (32, 200)
    assert manifest["counts"] == {"items": 20_000}

    loaded = AnnIndex.load(tmp_path / "ann", matrix)
    assert loaded.params == hnsw.params
    for a, b in zip(loaded.search(queries, 20), hnsw.search(queries, 20), strict=True):
        np.testing.assert_array_equal(a, b)
    assert AnnIndex.load(tmp_path / "ann", matrix, ef_search=400).ef_search == 400


def test_an_exact_index_saves_no_faiss_file(small: np.ndarray, tmp_path: Path) -> None:
    AnnIndex.exact(small).save(tmp_path / "ann")
    assert not (tmp_path / "ann" / INDEX_FILE).exists()
    loaded = AnnIndex.load(tmp_path / "ann", small)
    assert loaded.kind == "exact"


@pytest.fixture
def saved(small: np.ndarray, tmp_path: Path) -> Path:
    AnnIndex.build(small, kind="hnsw", m=8, seed=0).save(tmp_path / "ann")
    return tmp_path / "ann"


def test_a_missing_index_file_is_an_artifact_error_naming_it(
    saved: Path, small: np.ndarray
) -> None:
    (saved / INDEX_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing ANN index file") as info:
        AnnIndex.load(saved, small)
    assert info.value.path == saved / INDEX_FILE
    assert str(saved / INDEX_FILE) in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "one-byte"])
def test_a_corrupt_index_file_is_an_artifact_error_naming_it(
    saved: Path, small: np.ndarray, damage: str
) -> None:
    path = saved / INDEX_FILE
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = bytearray(b"not a faiss index")
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupt ANN index") as info:
        AnnIndex.load(saved, small)
    assert str(path) in str(info.value)


def test_a_missing_directory_or_manifest_is_an_artifact_error(
    saved: Path, small: np.ndarray, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match="missing ann-index artifact directory"):
        AnnIndex.load(tmp_path / "nowhere", small)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt ann-index manifest"):
        AnnIndex.load(saved, small)


def test_an_index_of_other_embeddings_is_refused(saved: Path, small: np.ndarray) -> None:
    with pytest.raises(ArtifactError, match="built for 60 x 8 items"):
        AnnIndex.load(saved, small[:50])
    with pytest.raises(ArtifactError, match="other item embeddings"):
        AnnIndex.load(saved, small * 2)


def test_load_or_exact_falls_back_to_exact_search_with_a_warning(
    saved: Path, small: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_or_exact(saved, small).kind == "hnsw"
    (saved / INDEX_FILE).write_bytes(b"broken")
    with caplog.at_level(logging.WARNING, logger="feedforge.index.ann"):
        index = load_or_exact(saved, small)
    assert index.kind == "exact"
    assert "ANN index unusable" in caplog.text and str(saved / INDEX_FILE) in caplog.text
    ids, _ = index.search(small[:2], 5)
    np.testing.assert_array_equal(ids, brute_force(small, small[:2], 5)[0])


# -- graph space ------------------------------------------------------------------------------
def spread_norms(n: int = 3000, d: int = 16, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose norms spread over two orders of magnitude, like iALS item factors
    (most items small, a few large), and user queries of the same kind."""
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, d)).astype(np.float32)
    items *= (np.exp(rng.normal(-1.5, 1.0, size=n)) / np.linalg.norm(items, axis=1))[:, None]
    users = rng.normal(size=(400, d)).astype(np.float32)
    return items, users


def test_inner_product_graph_searches_and_round_trips(tmp_path: Path) -> None:
    items, users = spread_norms()
    index = AnnIndex.build(items, metric="inner-product", ef_search=512, seed=0)
    assert index.params.metric == "inner-product"
    assert recall_at_k_vs_exact(index, items, users, 50) > 0.95
    ids, scores = index.search(users[:5], 50)
    np.testing.assert_allclose(scores, np.take_along_axis(users[:5] @ items.T, ids, 1), rtol=1e-5)
    index.save(tmp_path / "ann")
    loaded = AnnIndex.load(tmp_path / "ann", items)
    assert loaded.params == index.params
    np.testing.assert_array_equal(loaded.search(users, 50)[0], index.search(users, 50)[0])


def test_auto_keeps_the_graph_that_recalls_more() -> None:
    items, users = spread_norms()
    auto = AnnIndex.build(items, metric="auto", probe_queries=users, probe_k=100, seed=0)
    recalls = auto.params.probe_recall
    assert recalls is not None and recalls["l2-reduction"] < 0.95  # the reduction struggles
    assert auto.params.metric == max(recalls, key=lambda metric: recalls[metric])
    assert recall_at_k_vs_exact(auto, items, users, 100) >= recalls["l2-reduction"]
    # Where the reduction is good enough it is kept, without building the second graph.
    clustered_items = clustered(2000, 16, seed=1)
    kept = AnnIndex.build(
        clustered_items, metric="auto", probe_queries=clustered(300, 16, seed=2), probe_k=10
    )
    assert kept.params.metric == "l2-reduction"
    assert set(kept.params.probe_recall or {}) == {"l2-reduction"}
    with pytest.raises(ValidationError, match="probe_queries"):
        AnnIndex.build(items, metric="auto")
    with pytest.raises(ValidationError, match="metric"):
        AnnIndex.build(items, metric="cosine")  # type: ignore[arg-type]


def test_an_index_saved_before_the_metric_field_loads_as_the_reduction(
    saved: Path, small: np.ndarray
) -> None:
    manifest = saved / "manifest.json"
    payload = json.loads(manifest.read_text())
    payload["extra"].pop("metric")
    payload["extra"].pop("probe_recall")
    manifest.write_text(json.dumps(payload))
    assert AnnIndex.load(saved, small).params.metric == "l2-reduction"
