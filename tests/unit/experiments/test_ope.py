"""The off-policy estimators against Open Bandit Pipeline (obp 0.4.1) on the same logged
slates, to 1e-6: standard, reward-interaction and independent slate IPS, and IPS, SNIPS and DR
with each slate as one action. Plackett-Luce logging and target policies over 6 items and 3
slots, so every slate's exact probability is enumerable."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from obp.ope.estimators import (
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedInverseProbabilityWeighting,
)
from obp.ope.estimators_slate import (
    SlateIndependentIPS,
    SlateRewardInteractionIPS,
    SlateStandardIPS,
)

from feedforge.errors import ValidationError
from feedforge.experiments.ope import Slates, deterministic_target, estimate

# obp calls a pandas API that pandas deprecates
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

N_ITEMS, K, N = 6, 3, 400
SLATES = list(itertools.permutations(range(N_ITEMS), K))


def pl_probs(scores: np.ndarray, slate: tuple[int, ...]) -> np.ndarray:
    """Plackett-Luce conditional probabilities of ``slate``'s items."""
    left = np.ones(N_ITEMS, dtype=bool)
    out = []
    for item in slate:
        w = np.exp(scores) * left
        out.append(w[item] / w.sum())
        left[item] = False
    return np.asarray(out)


@pytest.fixture(scope="module")
def logged() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mu, pi, rewards, q_logged, q_target = [], [], [], [], []
    mu_m, pi_m, joint_pi_all, q_all, chosen = [], [], [], [], []
    for _ in range(N):
        s_log = rng.normal(size=N_ITEMS)
        s_target = s_log + rng.normal(scale=1.0, size=N_ITEMS)
        q = rng.uniform(0, 0.5, size=(N_ITEMS, K))  # the direct model: q(item, slot)
        joint_log = np.array([pl_probs(s_log, s).prod() for s in SLATES])
        joint_target = np.array([pl_probs(s_target, s).prod() for s in SLATES])
        pick = rng.choice(len(SLATES), p=joint_log / joint_log.sum())
        slate = SLATES[pick]
        mu.append(pl_probs(s_log, slate))
        pi.append(pl_probs(s_target, slate))
        rewards.append((rng.random(K) < q[list(slate), range(K)]).astype(float))
        values = np.array([q[list(s), range(K)].sum() for s in SLATES])
        q_logged.append(q[list(slate), range(K)])
        q_target.append((joint_target * values).sum())
        # marginal probability of each shown item at its slot
        mu_m.append([joint_log[[s[j] == slate[j] for s in SLATES]].sum() for j in range(K)])
        pi_m.append([joint_target[[s[j] == slate[j] for s in SLATES]].sum() for j in range(K)])
        joint_pi_all.append(joint_target)
        q_all.append(values)
        chosen.append(pick)
    return {
        "mu": np.array(mu), "pi": np.array(pi), "rewards": np.array(rewards),
        "q_logged": np.array(q_logged), "q_target": np.array(q_target),
        "mu_m": np.array(mu_m), "pi_m": np.array(pi_m), "joint_pi_all": np.array(joint_pi_all),
        "q_all": np.array(q_all), "chosen": np.array(chosen),
    }  # fmt: skip


def slates_of(d: dict[str, np.ndarray]) -> Slates:
    return Slates(
        mu=d["mu"], pi=d["pi"], rewards=d["rewards"], mask=np.ones((N, K), dtype=bool),
        q_logged=d["q_logged"], q_target=d["q_target"], mu_marginal=d["mu_m"],
        pi_marginal=d["pi_m"],
    )  # fmt: skip


def test_estimators_match_open_bandit_pipeline(logged: dict[str, np.ndarray]) -> None:
    ours = estimate(slates_of(logged), n_bootstrap=10)["estimates"]
    slate_id = np.repeat(np.arange(N), K)
    position = np.tile(np.arange(K), N)
    reward = logged["rewards"].ravel()
    joint_mu = np.repeat(logged["mu"].prod(axis=1), K)
    joint_pi = np.repeat(logged["pi"].prod(axis=1), K)
    sips = SlateStandardIPS(len_list=K).estimate_policy_value(
        slate_id=slate_id, reward=reward, position=position, pscore=joint_mu,
        evaluation_policy_pscore=joint_pi,
    )  # fmt: skip
    rips = SlateRewardInteractionIPS(len_list=K).estimate_policy_value(
        slate_id=slate_id, reward=reward, position=position,
        pscore_cascade=np.cumprod(logged["mu"], axis=1).ravel(),
        evaluation_policy_pscore_cascade=np.cumprod(logged["pi"], axis=1).ravel(),
    )  # fmt: skip
    iips = SlateIndependentIPS(len_list=K).estimate_policy_value(
        slate_id=slate_id, reward=reward, position=position,
        pscore_item_position=logged["mu_m"].ravel(),
        evaluation_policy_pscore_item_position=logged["pi_m"].ravel(),
    )  # fmt: skip
    assert ours["ips"]["value"] == pytest.approx(sips, abs=1e-6)
    assert ours["rips"]["value"] == pytest.approx(rips, abs=1e-6)
    assert ours["iips"]["value"] == pytest.approx(iips, abs=1e-6)

    # Each slate as one action of a contextual bandit: obp's IPW, SNIPW and DR.
    action_dist = logged["joint_pi_all"][:, :, None]
    bandit = {
        "reward": logged["rewards"].sum(axis=1),
        "action": logged["chosen"],
        "pscore": logged["mu"].prod(axis=1),
        "action_dist": action_dist,
    }
    ipw = InverseProbabilityWeighting().estimate_policy_value(**bandit)
    snipw = SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**bandit)
    dr = DoublyRobust().estimate_policy_value(
        **bandit, estimated_rewards_by_reg_model=logged["q_all"][:, :, None]
    )
    assert ours["ips"]["value"] == pytest.approx(ipw, abs=1e-6)
    assert ours["snips"]["value"] == pytest.approx(snipw, abs=1e-6)
    assert ours["dr"]["value"] == pytest.approx(dr, abs=1e-6)


def test_intervals_ess_support_and_clipping(logged: dict[str, np.ndarray]) -> None:
    result = estimate(slates_of(logged), n_bootstrap=300, clip=5.0)
    for name, est in result["estimates"].items():
        lo, hi = est["ci"]
        assert lo <= est["value"] <= hi, name
    assert 0 < result["ess"] <= N and result["support"] == 1.0
    assert result["clipped"] == int((logged["pi"].prod(1) / logged["mu"].prod(1) > 5).sum())


def test_a_log_that_never_explored_is_refused() -> None:
    ones = np.ones((4, 3))
    with pytest.raises(ValidationError, match="never explored"):
        estimate(Slates(mu=ones, pi=ones, rewards=ones, mask=ones.astype(bool)))


def test_deterministic_target_weights_follow_the_matching_prefix() -> None:
    logged = [["a", "b", "c"], ["a", "x", "c"], ["z", "b", "c"]]
    target = [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"]]
    assert deterministic_target(logged, target, 3).tolist() == [
        [1, 1, 1], [1, 0, 0], [0, 0, 0],
    ]  # fmt: skip
