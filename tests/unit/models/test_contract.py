"""The shared model contract: every registered recommender and ranker must pass these tests.

The parametrisation iterates the registry, so a newly registered model is tested at once. Give
it small hyper-parameters in ``SMALL_PARAMS`` if its defaults are slow; a registered model
that is not personalised (scores the same for everyone) belongs in ``NOT_PERSONALISED``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import implicit.cpu.als
import numpy as np
import pytest

from feedforge.config import ModelsConfig
from feedforge.datasets.interactions import Interactions
from feedforge.errors import ArtifactError, ConfigError, DataError, NotFittedError, ValidationError
from feedforge.models.als import ALSRecommender
from feedforge.models.base import EmbeddingRecommender, Recommender
from feedforge.models.popularity import MostPopular
from feedforge.models.registry import (
    RANKERS,
    RECOMMENDERS,
    create_ranker,
    create_recommender,
    load_ranker,
    load_recommender,
)

INPUTS = {"dataset": "test-dataset"}  # the lineage every saved model records

SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "multvae": {
        "hidden_dim": 32,
        "latent_dim": 8,
        "epochs": 60,
        "batch_size": 8,
        "anneal_steps": 200,
        "learning_rate": 5e-3,
        "device": "cpu",
    },
    # Strong regularisation keeps ALS near the data's true rank (2 blocks): with weak
    # regularisation it has enough capacity to learn each held-out item as a zero.
    "als": {"factors": 4, "iterations": 15, "regularization": 3.0, "alpha": 5.0},
    # 100 positives make only 100 SGD steps per epoch: the default learning rate leaves the
    # item biases (popularity) in charge of the ranking.
    "bpr": {"factors": 8, "learning_rate": 0.05},
    # 20 users: many small steps, and no early stopping (its held-out users would be all).
    "sasrec": {"batch_size": 16, "epochs": 20, "learning_rate": 2e-3, "patience": None},
}
NOT_PERSONALISED = {"popularity"}

DAY_US = 86_400 * 1_000_000
T0 = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
N_USERS, N_ITEMS, BLOCK = 20, 12, 6


def block_interactions() -> tuple[Interactions, np.ndarray]:
    """Two blocks: users 0-9 like items 0-5, users 10-19 like items 6-11.

    Each user has every item of their block except one held-out item, ``block_start + u % 6``.

    Returns:
        The training interactions and the ``(N_USERS,)`` held-out item of each user.
    """
    users, items, held_out = [], [], []
    for u in range(N_USERS):
        start = 0 if u < N_USERS // 2 else BLOCK
        held = start + u % BLOCK
        held_out.append(held)
        for i in range(start, start + BLOCK):
            if i != held:
                users.append(u)
                items.append(i)
    n = len(users)
    rng = np.random.default_rng(0)
    interactions = Interactions(
        user_idx=np.array(users, dtype=np.int32),
        item_idx=np.array(items, dtype=np.int32),
        weight=np.ones(n, dtype=np.float32),
        timestamp_us=T0 + rng.integers(0, 3 * DAY_US, size=n, dtype=np.int64),
        n_users=N_USERS,
        n_items=N_ITEMS,
    )
    return interactions, np.array(held_out)


def make(name: str) -> Recommender:
    return RECOMMENDERS[name](**SMALL_PARAMS.get(name, {}))


@pytest.fixture(scope="module")
def data() -> tuple[Interactions, np.ndarray]:
    return block_interactions()


@pytest.fixture(scope="module", params=sorted(RECOMMENDERS))
def fitted(request: pytest.FixtureRequest, data: tuple[Interactions, np.ndarray]) -> Recommender:
    return make(request.param).fit(data[0])


ALL = pytest.mark.parametrize("name", sorted(RECOMMENDERS))


# -- recommenders ---------------------------------------------------------------------------


@ALL
def test_fit_returns_self(name: str, data: tuple[Interactions, np.ndarray]) -> None:
    model = make(name)
    assert model.fit(data[0]) is model


def test_recommend_shapes_and_dtypes(fitted: Recommender) -> None:
    users = np.array([0, 5, 19])
    ids, scores = fitted.recommend(users, k=5)
    assert ids.shape == scores.shape == (3, 5)
    assert np.issubdtype(ids.dtype, np.integer)
    assert scores.dtype == np.float32
    assert ((ids >= 0) & (ids < N_ITEMS)).all()
    assert (np.diff(scores, axis=1) <= 0).all(), "best first"
    assert all(len(set(row)) == 5 for row in ids.tolist()), "no repeats within a list"
    assert fitted.score(users).shape == (3, N_ITEMS)
    assert fitted.score(users).dtype == np.float32


def test_excluded_items_never_returned(
    fitted: Recommender, data: tuple[Interactions, np.ndarray]
) -> None:
    train = data[0].to_csr()
    users = np.arange(N_USERS)
    # 5 of 12 items are excluded per user; ask for 6 of the 7 left.
    ids, scores = fitted.recommend(users, k=6, exclude=train)
    for u in users:
        assert not set(ids[u].tolist()) & set(train[u].indices.tolist())
    assert np.isfinite(scores).all()


@ALL
def test_same_random_state_same_model(name: str, data: tuple[Interactions, np.ndarray]) -> None:
    a = make(name).fit(data[0]).score(np.arange(N_USERS))
    b = make(name).fit(data[0]).score(np.arange(N_USERS))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(set(RECOMMENDERS) - NOT_PERSONALISED))
def test_known_answer_held_out_item_ranks_above_other_block(
    name: str, data: tuple[Interactions, np.ndarray]
) -> None:
    interactions, held_out = data
    model = make(name).fit(interactions)
    users = np.arange(N_USERS)
    scores = model.score(users)
    in_block_a = users < N_USERS // 2
    other_block = np.where(
        in_block_a[:, None], np.arange(N_ITEMS) >= BLOCK, np.arange(N_ITEMS) < BLOCK
    )
    best_other = np.where(other_block, scores, -np.inf).max(axis=1)
    assert (scores[users, held_out] > best_other).all()
    # With the training items excluded, the held-out item comes first.
    ids, _ = model.recommend(users, k=3, exclude=interactions.to_csr())
    np.testing.assert_array_equal(ids[:, 0], held_out)


def test_save_load_gives_identical_scores(fitted: Recommender, tmp_path: Path) -> None:
    fitted.save(tmp_path / "model", inputs=INPUTS)
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["artifact"] == f"model/{fitted.name}"
    assert manifest["schema_version"] == 1
    assert manifest["inputs"] == INPUTS  # written once, with the lineage given to save
    assert manifest["extra"]["params"] == fitted.get_params()
    loaded = type(fitted).load(tmp_path / "model")
    assert loaded.manifest_ is not None and loaded.manifest_.version == manifest["version"]
    assert loaded.artifact_version == fitted.artifact_version == manifest["version"]
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(loaded.score(users), fitted.score(users))
    assert loaded.get_params() == fitted.get_params()
    # The registry loads the same model and quotes the caller's build command in errors.
    again = load_recommender(fitted.name, tmp_path / "model", build_command="make it")
    np.testing.assert_array_equal(again.score(users), fitted.score(users))
    with pytest.raises(ArtifactError, match="make it"):
        load_recommender(fitted.name, tmp_path / "nothing", build_command="make it")


@ALL
def test_load_missing_directory_names_the_path(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ArtifactError) as info:
        RECOMMENDERS[name].load(missing)
    assert str(missing) in str(info.value)
    assert "feedforge train" in str(info.value)


def test_load_corrupt_or_missing_files_names_the_file(fitted: Recommender, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    fitted.save(directory, inputs=INPUTS)
    files = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    assert "manifest.json" in files and len(files) > 1
    for file in files:
        fitted.save(directory, inputs=INPUTS)
        (directory / file).write_bytes(b"\x93NUMPY garbage {")
        with pytest.raises(ArtifactError) as info:
            type(fitted).load(directory)
        assert str(directory / file) in str(info.value), file
        (directory / file).unlink()
        with pytest.raises(ArtifactError) as info:
            type(fitted).load(directory)
        assert str(directory / file) in str(info.value), file


def test_load_refuses_another_models_directory(fitted: Recommender, tmp_path: Path) -> None:
    fitted.save(tmp_path / "model", inputs=INPUTS)
    for name, cls in RECOMMENDERS.items():
        if name != fitted.name:
            with pytest.raises(ArtifactError, match=f"model/{fitted.name}"):
                cls.load(tmp_path / "model")


@ALL
def test_unfitted_use_raises_not_fitted(name: str, tmp_path: Path) -> None:
    model = make(name)
    with pytest.raises(NotFittedError):
        model.score(np.array([0]))
    with pytest.raises(NotFittedError):
        model.recommend(np.array([0]), k=3)
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "model", inputs=INPUTS)
    assert not (tmp_path / "model" / "manifest.json").exists()
    with pytest.raises(NotFittedError, match="no artifact version"):
        _ = model.artifact_version  # neither saved nor loaded: no lineage to report
    if isinstance(model, EmbeddingRecommender):
        with pytest.raises(NotFittedError):
            model.user_embeddings()
        with pytest.raises(NotFittedError):
            model.item_embeddings()


@ALL
def test_empty_interactions_raise_data_error(name: str) -> None:
    empty = np.empty(0, dtype=np.int32)
    interactions = Interactions(
        empty, empty, np.empty(0, np.float32), np.empty(0, np.int64), N_USERS, N_ITEMS
    )
    with pytest.raises(DataError):
        make(name).fit(interactions)


@pytest.mark.parametrize(
    "name", sorted(n for n, cls in RECOMMENDERS.items() if issubclass(cls, EmbeddingRecommender))
)
def test_embeddings_are_float32_and_give_the_scores(
    name: str, data: tuple[Interactions, np.ndarray]
) -> None:
    model = make(name).fit(data[0])
    assert isinstance(model, EmbeddingRecommender)
    users, items = model.user_embeddings(), model.item_embeddings()
    assert users.dtype == items.dtype == np.float32
    assert users.shape[0] == N_USERS and items.shape[0] == N_ITEMS
    assert users.shape[1] == items.shape[1]
    np.testing.assert_allclose(model.score(np.arange(N_USERS)), users @ items.T, rtol=1e-6)


def test_registry_create_and_unknown_names(tmp_path: Path) -> None:
    for name in RECOMMENDERS:
        assert isinstance(create_recommender(name, ModelsConfig()), RECOMMENDERS[name])
    for name in RANKERS:
        assert isinstance(create_ranker(name), RANKERS[name])
    assert create_recommender("als", ModelsConfig(als={"factors": 3})).get_params()["factors"] == 3
    with pytest.raises(ConfigError, match="known: " + ", ".join(sorted(RECOMMENDERS))):
        load_recommender("nope", tmp_path)
    with pytest.raises(ConfigError, match="unknown ranker"):
        load_ranker("nope", tmp_path)
    with pytest.raises(ConfigError):
        create_recommender("nope")


# Rankers have their own shared contract: tests/unit/models/test_rankers.py.


# -- model-specific behaviour ---------------------------------------------------------------


def test_popularity_known_answer_window_weights_and_tie_break(tmp_path: Path) -> None:
    newest = T0 + 10 * DAY_US
    old, recent = newest - 5 * DAY_US, newest - DAY_US  # window_days=2: old is out, recent in
    rows = [  # (item, timestamp, weight)
        (0, old, 1.0), (0, old, 1.0), (0, old, 1.0), (0, recent, 1.0),  # window 1, total 4
        (1, recent, 1.0), (1, newest, 1.0),                             # window 2, total 2
        (2, recent, 1.0), (2, old, 1.0),                                # window 1, total 2
        (3, old, 5.0),                                                  # window 0, total 5
        (5, newest - 2 * DAY_US, 3.0),         # window 3 (on the boundary, weight 3)
    ]  # fmt: skip
    item, ts, w = (np.array(col) for col in zip(*rows, strict=True))
    n = len(rows)
    interactions = Interactions(
        np.arange(n, dtype=np.int32) % 4, item.astype(np.int32), w.astype(np.float32),
        ts.astype(np.int64), n_users=4, n_items=6,
    )  # fmt: skip
    model = MostPopular(window_days=2.0).fit(interactions)
    # 5 (w3) > 1 (w2) > 0 (w1, total 4) > 2 (w1, total 2) > 3 (w0, total 5) > 4 (nothing)
    ids, _ = model.recommend(np.array([0]), k=6)
    np.testing.assert_array_equal(ids[0], [5, 1, 0, 2, 3, 4])
    np.testing.assert_array_equal(model.window_counts_, [1, 2, 1, 0, 0, 3])
    np.testing.assert_array_equal(model.total_counts_, [4, 2, 2, 5, 0, 3])
    # The same vector for every user, including one unknown at training time.
    scores = model.score(np.array([0, 3, 99]))
    assert (scores == scores[0]).all()
    model.save(tmp_path / "pop", inputs=INPUTS)
    np.testing.assert_array_equal(
        MostPopular.load(tmp_path / "pop").score(np.array([0])), scores[:1]
    )


def test_als_fold_in_recovers_the_user(data: tuple[Interactions, np.ndarray]) -> None:
    interactions, held_out = data
    model = ALSRecommender(**SMALL_PARAMS["als"]).fit(interactions)
    items = model.item_embeddings()
    train = interactions.to_csr()
    for u in (0, 13):
        history = train[u].indices
        vector = model.fold_in(history)
        assert vector.shape == (model.params.factors,) and vector.dtype == np.float32
        stored = model.user_embeddings()[u]
        cosine = vector @ stored / (np.linalg.norm(vector) * np.linalg.norm(stored))
        assert cosine > 0.95
        scores = items @ vector
        scores[history] = -np.inf
        assert scores.argmax() == held_out[u]
    # Repeated items sum their weights, as in training.
    np.testing.assert_allclose(
        model.fold_in(np.array([1, 1, 2])), model.fold_in(np.array([1, 2]), np.array([2.0, 1.0]))
    )
    assert not model.fold_in(np.array([], dtype=np.int64)).any()
    with pytest.raises(ValidationError, match="outside"):
        model.fold_in(np.array([N_ITEMS]))
    with pytest.raises(ValidationError, match="weights"):
        model.fold_in(np.array([1, 2]), np.array([1.0]))
    with pytest.raises(ValidationError, match="weights"):
        model.fold_in(np.array([1]), np.array([np.nan]))


def test_als_fold_in_solves_the_als_normal_equation(data: tuple[Interactions, np.ndarray]) -> None:
    model = ALSRecommender(**SMALL_PARAMS["als"]).fit(data[0])
    Y = model.item_embeddings().astype(np.float64)
    history, weights = np.array([0, 3, 4]), np.array([1.0, 2.0, 0.5])
    # Dense form of (Y^T C Y + lambda I) x = Y^T C p with c = 1 + alpha * w, p = 1 on history.
    c = np.ones(N_ITEMS)
    c[history] += model.params.alpha * weights
    p = np.zeros(N_ITEMS)
    p[history] = 1.0
    a = Y.T @ (c[:, None] * Y) + model.params.regularization * np.eye(Y.shape[1])
    expected = np.linalg.solve(a, Y.T @ (c * p))
    np.testing.assert_allclose(model.fold_in(history, weights), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_als_divergence_raises_data_error(
    bad: float, monkeypatch: pytest.MonkeyPatch, data: tuple[Interactions, np.ndarray]
) -> None:
    def diverging_fit(
        self: Any, user_items: Any, show_progress: bool = True, callback: Any = None
    ) -> None:  # implicit's signature
        self.user_factors = np.full((user_items.shape[0], self.factors), bad, np.float32)
        self.item_factors = np.full((user_items.shape[1], self.factors), bad, np.float32)
        self._check_fit_errors()  # implicit's own NaN check (inf passes it)

    monkeypatch.setattr(implicit.cpu.als.AlternatingLeastSquares, "fit", diverging_fit)
    with pytest.raises(DataError, match="diverged"):
        ALSRecommender(factors=4).fit(data[0])


def test_als_rejects_invalid_weights_and_params(data: tuple[Interactions, np.ndarray]) -> None:
    interactions = data[0]
    negative = Interactions(
        interactions.user_idx, interactions.item_idx, -interactions.weight,
        interactions.timestamp_us, N_USERS, N_ITEMS,
    )  # fmt: skip
    with pytest.raises(ValidationError, match="weights"):
        ALSRecommender(factors=4).fit(negative)
    with pytest.raises(ValidationError, match="factors"):
        ALSRecommender(factors=0).fit(interactions)
