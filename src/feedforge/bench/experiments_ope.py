"""The off-policy section of ``feedforge bench experiments``: estimates of three target
policies from feeds logged under an exploring one, against their true values.

Per population user (a sample of ``ope_users`` users (2,000) with personalized feeds), the
service's scored candidates (:meth:`~feedforge.serving.pipeline.FeedService.scored_candidates`)
are cut to the :data:`POOL` best by the ranker; every policy is the re-ranking stage itself
(:func:`~feedforge.serving.rerank.rerank`) with another exploration setting, over those
candidates, showing :data:`SLOTS` items:

* logging: ``epsilon_greedy`` with epsilon :data:`LOGGING_EPSILON`;
* targets: ``greedy`` (no exploration), ``softmax`` at temperature 0.1, ``epsilon_greedy`` at
  0.1.

The reward of a slot is a click, drawn from the response model. A target's **true value** is
its expected clicks per session: ``sum_j p_click(a_j, j)`` averaged over :data:`TRUTH_DRAWS`
slates drawn from the target per user (exact for the greedy one), users weighted by their
session rates. The **logged data** of a run: ``ope_sessions`` sessions (20,000) (users drawn by
session rate) each showing one of a bank of ``ope_bank`` slates (50) drawn from the logging policy
per user (with its logged propensities), clicks drawn afresh per run; the targets'
propensities of each logged slate come from
:func:`~feedforge.serving.rerank.slate_propensities`. The direct model of ``dr`` is the
ranker's score calibrated per slot on the run's logged clicks (``q = c_j * score``). The bank
makes runs share logged slates (each run draws 20,000 of 100,000), so run-to-run spread is
somewhat smaller than with fresh logging draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from feedforge.config import ExplorationConfig, ReRankConfig
from feedforge.events.response import response_probabilities
from feedforge.events.world import World
from feedforge.experiments.ope import Slates, estimate
from feedforge.serving.rerank import Candidates, rerank, slate_propensities

POOL = 20
SLOTS = 3
TRUTH_DRAWS = 100
LOGGING_EPSILON = 0.5
ESTIMATORS = ("ips", "snips", "dr", "rips")


def _policies() -> dict[str, ReRankConfig]:
    return {
        "greedy": ReRankConfig(),
        "softmax-0.1": ReRankConfig(exploration=ExplorationConfig(type="softmax", temperature=0.1)),
        "epsilon-0.1": ReRankConfig(
            exploration=ExplorationConfig(type="epsilon_greedy", epsilon=0.1)
        ),
    }


def _pool(cands: Candidates) -> Candidates:
    top = np.argsort(-np.asarray(cands.scores), kind="stable")[:POOL]
    return Candidates(
        item_ids=[cands.item_ids[j] for j in top],
        scores=np.asarray(cands.scores)[top],
        categories=[cands.categories[j] for j in top],
        age_days=np.asarray(cands.age_days)[top],
    )


def run_ope(
    world: World,
    extra: dict[str, Any],
    spec: Any,
    rng: np.random.Generator,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The OPE section (see the module docs)."""
    item_index: dict[str, int] = extra["item_index"]
    now_s: float = extra["now_s"]
    users = sorted(extra["candidates"])
    bank, n_logged = spec.ope_bank, spec.ope_sessions
    picked = rng.choice(len(users), min(spec.ope_users, len(users)), replace=False)
    users = [users[i] for i in np.sort(picked)]
    pools = {u: _pool(extra["candidates"][u]) for u in users}
    users = [u for u in users if len(pools[u].item_ids) >= SLOTS]
    rate = world.user_activity[users].astype(np.float64)
    weights = rate / rate.sum()
    logging = ReRankConfig(
        exploration=ExplorationConfig(type="epsilon_greedy", epsilon=LOGGING_EPSILON)
    )
    targets = _policies()

    def p_click(u: int, items: list[str]) -> np.ndarray:
        idx = np.asarray([item_index[i] for i in items])
        return response_probabilities(world, u, idx, np.arange(len(idx)), now_s).p_click

    progress(f"OPE: truth of {len(targets)} targets over {len(users):,} users")
    true_value: dict[str, float] = {}
    q_samples: dict[str, list[list[list[str]]]] = {}
    for name, config in targets.items():
        draws = 1 if config.exploration.type == "none" else TRUTH_DRAWS
        values, slates = np.zeros(len(users)), []
        for n, u in enumerate(users):
            drawn = [rerank(pools[u], SLOTS, config, rng).item_ids for _ in range(draws)]
            slates.append(drawn)
            values[n] = np.mean([p_click(u, s).sum() for s in drawn])
        true_value[name] = float((weights * values).sum())
        q_samples[name] = slates

    progress(f"OPE: a bank of {bank} logged slates per user")
    bank_user, bank_mu, bank_click = [], [], []
    bank_pi: dict[str, list[list[float]]] = {name: [] for name in targets}
    bank_score = []
    for n, u in enumerate(users):
        for _ in range(bank):
            shown = rerank(pools[u], SLOTS, logging, rng)
            bank_user.append(n)
            bank_mu.append(shown.propensities)
            bank_click.append(p_click(u, shown.item_ids))
            score_of = dict(zip(pools[u].item_ids, pools[u].scores, strict=True))
            bank_score.append([score_of[i] for i in shown.item_ids])
            for name, config in targets.items():
                bank_pi[name].append(slate_propensities(pools[u], shown.item_ids, config))
    user_of = np.asarray(bank_user)
    mu = np.asarray(bank_mu)
    click_p = np.asarray(bank_click)
    score = np.asarray(bank_score)
    pi = {name: np.asarray(v) for name, v in bank_pi.items()}
    # The direct model's value of each user's target slates, per unit of the slot calibration.
    score_by_user = [dict(zip(pools[u].item_ids, pools[u].scores, strict=True)) for u in users]
    target_scores = {
        name: np.asarray(
            [
                np.mean([[score_by_user[n][i] for i in s] for s in q_samples[name][n]], axis=0)
                for n in range(len(users))
            ]
        )
        for name in targets
    }

    covered = total = 0
    errors: dict[str, dict[str, list[float]]] = {n: {e: [] for e in ESTIMATORS} for n in targets}
    first: dict[str, Any] = {}
    for run in range(spec.ope_runs):
        if run % 50 == 0:
            progress(f"OPE run {run:,} / {spec.ope_runs:,}")
        sessions_user = rng.choice(len(users), n_logged, p=weights)
        rows = sessions_user * bank + rng.integers(0, bank, n_logged)
        clicks = (rng.random((n_logged, SLOTS)) < click_p[rows]).astype(float)
        s = score[rows]
        calibration = (s * clicks).sum(axis=0) / np.maximum((s * s).sum(axis=0), 1e-12)
        mask = np.ones((n_logged, SLOTS), dtype=bool)
        for name in targets:
            logged = Slates(
                mu=mu[rows],
                pi=pi[name][rows],
                rewards=clicks,
                mask=mask,
                q_logged=s * calibration,
                q_target=(target_scores[name][user_of[rows]] * calibration).sum(axis=1),
            )
            result = estimate(logged, n_bootstrap=200, seed=run)
            for est in ESTIMATORS:
                value = result["estimates"][est]["value"]
                errors[name][est].append(abs(value - true_value[name]) / true_value[name])
            for est in ("snips", "dr"):
                lo, hi = result["estimates"][est]["ci"]
                covered += lo <= true_value[name] <= hi
                total += 1
            if run == 0:
                first[name] = result
    policies = []
    for name in targets:
        result = first[name]
        policies.append(
            {
                "name": name,
                "true_value": true_value[name],
                "estimates": {
                    est: {
                        "value": result["estimates"][est]["value"],
                        "ci": result["estimates"][est]["ci"],
                        "relative_error": float(np.mean(errors[name][est])),
                    }
                    for est in ESTIMATORS
                },
                "ess": result["ess"],
                "support": result["support"],
            }
        )
    return {
        "runs": spec.ope_runs,
        "logged_sessions": n_logged,
        "slots": SLOTS,
        "pool": POOL,
        "logging_policy": f"epsilon_greedy {LOGGING_EPSILON}",
        "reward": "clicks per session",
        "estimators": list(ESTIMATORS),
        "relative_error": "mean over runs of |estimate - true| / true",
        "policies": policies,
        "ci_coverage": covered / total if total else None,
        "setup": (
            f"OPE set-up: {len(users):,} users, each one's {POOL} best candidates by the ranker, "
            f"{SLOTS} slots, logging epsilon-greedy {LOGGING_EPSILON}; {n_logged:,} logged "
            f"sessions per run drawn from a bank of {bank} logged slates per user; clicks drawn "
            f"per run; truth from {TRUTH_DRAWS} target slates per user; intervals: percentile "
            "bootstrap over sessions (200 resamples)."
        ),
    }
