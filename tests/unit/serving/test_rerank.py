"""Re-ranking: rules, freshness, category caps, MMR and exploration with propensities."""

from __future__ import annotations

import numpy as np
import pytest

from feedforge.config import BusinessRule, ExplorationConfig, ReRankConfig
from feedforge.errors import ValidationError
from feedforge.serving.rerank import Candidates, pinned_item_ids, rerank, slate_propensities


def candidates(
    scores: list[float],
    categories: list[str] | None = None,
    age_days: list[float] | None = None,
    vectors: np.ndarray | None = None,
) -> Candidates:
    n = len(scores)
    return Candidates(
        item_ids=[f"i{j}" for j in range(n)],
        scores=np.asarray(scores, dtype=np.float64),
        categories=categories or ["a"] * n,
        age_days=np.asarray(age_days if age_days is not None else [np.nan] * n),
        vectors=vectors,
    )


def test_default_is_the_score_order_with_propensity_one() -> None:
    out = rerank(candidates([0.1, 0.9, 0.5, 0.7]), 3, ReRankConfig())
    assert out.item_ids == ["i1", "i3", "i2"]
    assert out.scores == [0.9, 0.7, 0.5]
    assert out.propensities == [1.0, 1.0, 1.0]
    # Fewer candidates than k: all of them, no padding.
    assert rerank(candidates([0.2, 0.1]), 10, ReRankConfig()).item_ids == ["i0", "i1"]


def test_business_rules() -> None:
    c = candidates([0.9, 0.8, 0.7, 0.6, 0.5], ["a", "b", "a", "c", "b"])
    rules = [
        BusinessRule(action="block", item_ids=["i0"]),
        BusinessRule(action="boost", categories=["c"], factor=2.0),
        BusinessRule(action="bury", item_ids=["i1"]),
        BusinessRule(action="pin", item_ids=["i4"], position=1),
    ]
    out = rerank(c, 5, ReRankConfig(rules=rules))
    # i0 blocked; i3 boosted to 1.2 (first); i4 pinned at slot 1; i1 buried last.
    assert out.item_ids == ["i3", "i4", "i2", "i1"]
    assert out.scores[0] == pytest.approx(1.2)
    assert pinned_item_ids(ReRankConfig(rules=rules)) == ["i4"]
    # A pin beyond the feed's natural length still appears (after the others).
    far = [BusinessRule(action="pin", item_ids=["i4"], position=8)]
    assert rerank(candidates([0.9, 0.8, 0.1]), 10, ReRankConfig(rules=far)).item_ids[-1] == "i2"


def test_freshness_boost_and_negative_scores() -> None:
    c = candidates([-0.5, -0.45, -1.0], age_days=[30.0, 60.0, 0.0])
    plain = rerank(c, 3, ReRankConfig())
    assert plain.item_ids == ["i1", "i0", "i2"]  # exp(score - max) keeps the order
    fresh = rerank(c, 3, ReRankConfig(freshness_boost=1e9, freshness_tau_days=7))
    assert fresh.item_ids[0] == "i2"  # age 0 gets the full boost


def test_category_cap_and_relaxation() -> None:
    c = candidates([0.9, 0.8, 0.7, 0.6, 0.1], ["a", "a", "a", "b", "b"])
    out = rerank(c, 4, ReRankConfig(category_cap=2))
    assert out.item_ids == ["i0", "i1", "i3", "i4"]  # the third "a" waits for the "b"s
    relaxed = rerank(c, 5, ReRankConfig(category_cap=2))
    assert relaxed.item_ids[-1] == "i2"  # no other choice left: the cap gives way


def test_mmr_trades_relevance_for_diversity() -> None:
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    c = candidates([0.9, 0.85, 0.5], vectors=vectors)
    assert rerank(c, 2, ReRankConfig()).item_ids == ["i0", "i1"]
    assert rerank(c, 2, ReRankConfig(mmr_lambda=0.3)).item_ids == ["i0", "i2"]
    assert rerank(c, 2, ReRankConfig(mmr_lambda=1.0)).item_ids == ["i0", "i1"]


def test_epsilon_greedy_propensities_are_the_pick_probabilities() -> None:
    c = candidates([0.9, 0.5, 0.1])
    config = ReRankConfig(exploration=ExplorationConfig(type="epsilon_greedy", epsilon=0.3))
    rng = np.random.default_rng(0)
    firsts: dict[str, int] = {}
    n = 4000
    for _ in range(n):
        out = rerank(c, 1, config, rng)
        first = out.item_ids[0]
        firsts[first] = firsts.get(first, 0) + 1
        expected = 0.7 + 0.1 if first == "i0" else 0.1
        assert out.propensities[0] == pytest.approx(expected)
    assert firsts["i0"] / n == pytest.approx(0.8, abs=0.03)
    assert firsts["i2"] / n == pytest.approx(0.1, abs=0.02)


def test_softmax_propensities_match_frequencies_and_seed_repeats() -> None:
    c = candidates([1.0, 0.5, 0.0])
    config = ReRankConfig(exploration=ExplorationConfig(type="softmax", temperature=0.5))
    rng = np.random.default_rng(1)
    logits = np.array([1.0, 0.5, 0.0]) / 0.5
    probs = np.exp(logits) / np.exp(logits).sum()
    counts = np.zeros(3)
    for _ in range(4000):
        out = rerank(c, 2, config, rng)
        j = int(out.item_ids[0][1:])
        counts[j] += 1
        assert out.propensities[0] == pytest.approx(probs[j])
        assert 0 < out.propensities[1] <= 1
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.03)
    seeded = ReRankConfig(exploration=ExplorationConfig(type="softmax", seed=3))
    assert rerank(c, 3, seeded).item_ids == rerank(c, 3, seeded).item_ids


def test_bad_input() -> None:
    with pytest.raises(ValidationError, match="k must be"):
        rerank(candidates([0.1]), 0, ReRankConfig())
    with pytest.raises(ValidationError, match="NaN"):
        rerank(candidates([0.1, float("nan")]), 1, ReRankConfig())
    with pytest.raises(ValidationError, match="shapes"):
        Candidates(["a", "b"], np.zeros(3), ["x", "y"], np.zeros(2))


def test_plain_config_keeps_raw_scores_and_matches_the_slot_loop() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=50)  # negative retrieval dot products included
    scores[7] = scores[3]  # a tie: input order decides, in both paths
    c = candidates(list(scores), [f"c{j % 5}" for j in range(50)])
    plain = rerank(c, 12, ReRankConfig())
    assert plain.scores == sorted(scores, reverse=True)[:12]  # no transform without a boost
    looped = rerank(c, 12, ReRankConfig(category_cap=50))  # a cap that never binds
    assert looped.item_ids == plain.item_ids


@pytest.mark.parametrize(
    "config",
    [
        ReRankConfig(exploration=ExplorationConfig(type="epsilon_greedy", epsilon=0.4)),
        ReRankConfig(exploration=ExplorationConfig(type="softmax", temperature=0.2)),
        ReRankConfig(
            category_cap=1,
            mmr_lambda=0.6,
            rules=[BusinessRule(action="pin", item_ids=["i8"], position=1)],
            exploration=ExplorationConfig(type="softmax", temperature=0.3),
        ),
    ],
    ids=["epsilon", "softmax", "cap-mmr-pin"],
)
def test_slate_propensities_are_what_rerank_logged_for_its_own_slates(
    config: ReRankConfig,
) -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=9).tolist()
    cands = candidates(scores, categories=list("aabbccdde"), vectors=rng.normal(size=(9, 4)))
    rng = np.random.default_rng(0)
    for _ in range(30):
        shown = rerank(cands, 4, config, rng)
        assert slate_propensities(cands, shown.item_ids, config) == pytest.approx(
            shown.propensities, rel=1e-12
        )


def test_slate_propensities_of_slates_a_policy_cannot_show() -> None:
    cands = candidates([0.9, 0.5, 0.7, 0.1, 0.3])
    plain = ReRankConfig()
    top = rerank(cands, 3, plain).item_ids
    assert slate_propensities(cands, top, plain) == [1.0, 1.0, 1.0]
    assert slate_propensities(cands, [top[0], top[2], top[1]], plain) == [1.0, 0.0, 0.0]
    greedy = ReRankConfig(exploration=ExplorationConfig(type="epsilon_greedy", epsilon=0.2))
    # an unknown item: 0 from there on
    assert slate_propensities(cands, [top[0], "nope", top[1]], greedy)[1:] == [0.0, 0.0]
