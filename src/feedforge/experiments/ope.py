"""Off-policy estimates of a target policy's value from logged feeds (slates).

The feed log records, per request ``i`` and slot ``j``, the shown item ``a_ij`` and the
logging policy's **conditional** propensity ``mu_ij = mu(a_ij | x_i, a_i1..a_i(j-1))`` (the
Plackett-Luce factor of the re-ranking stage); events give each slot's reward ``r_ij`` (the
objective's value). The target gives ``pi_ij``, its conditional probability of the same
item given the same prefix (for a deterministic target with feed ``t_i``: 1 while the logged
prefix equals ``t_i``'s, else 0, :func:`deterministic_target`). With ``W_i = prod_j
pi_ij/mu_ij`` (the slate's weight, clipped at ``clip``), ``R_i = sum_j r_ij`` and ``n``
requests:

* **ips** (standard slate IPS): ``mean_i W_i R_i``. Unbiased with no assumption on how slots
  interact, when the target's slates are within the logging policy's support; the variance
  grows with the slate length.
* **snips**: ``sum_i W_i R_i / sum_i W_i`` (self-normalised: biased, consistent, bounded by
  the rewards).
* **dr** (doubly robust): ``mean_i [Q(t_i) + W_i (R_i - Q(a_i))]`` where ``Q(s) = sum_j
  q(x_i, s_j, j)`` is the direct model's value of a slate (from the ranker's predictions):
  unbiased when either the weights or the model are right.
* **rips** (slate-aware, cascade / reward-interaction IPS, McInerney et al. 2020, Kiyohara et
  al. 2022): ``mean_i sum_j w_ij r_ij`` with the prefix weight ``w_ij = prod_{l<=j}
  pi_il/mu_il``. Assumes a slot's reward depends only on the items at and above it (the user
  scans down): far lower variance than ``ips``, and unbiased under that assumption.
* **iips** (independent-item / position-based IPS, Li et al. 2018): ``mean_i sum_j
  (pi(a_ij at j) / mu(a_ij at j)) r_ij`` with **marginal** item-position probabilities.
  Assumes a slot's reward depends only on its own item and position. The feed log holds
  conditional propensities only, so it is offered for callers that know the marginals (the
  simulator does).

Each estimate comes with its effective sample size ``(sum W)^2 / sum W^2`` (of the slate
weights; of the last prefix weights for ``rips``), the share of requests the target
supports (``W > 0``), the clipping applied, and a percentile bootstrap interval over
requests. A log whose propensities are all 1 was written by a policy that never explores:
no estimate is made (``ValidationError``), since every target differing from it has no
support.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feedforge.errors import ValidationError

ESTIMATORS = ("ips", "snips", "dr", "rips", "iips")


@dataclass(frozen=True)
class Slates:
    """Logged slates, padded to ``K`` slots (``mask`` false on padding).

    Attributes:
        mu: ``(n, K)`` logging conditional propensities of the shown items.
        pi: ``(n, K)`` the target's conditional probabilities of the same items.
        rewards: ``(n, K)`` per-slot rewards.
        mask: ``(n, K)`` true on real slots.
        q_logged: ``(n, K)`` the direct model's expected reward of each shown item at its
            slot (None: no ``dr``).
        q_target: ``(n,)`` the direct model's value of the target's slate (None: no ``dr``).
        mu_marginal: ``(n, K)`` the logging policy's marginal probability of each shown item
            at its slot (None: no ``iips``).
        pi_marginal: ``(n, K)`` the target's (None: no ``iips``).
    """

    mu: np.ndarray
    pi: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None
    mu_marginal: np.ndarray | None = None
    pi_marginal: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = np.shape(self.mu)
        if len(shape) != 2:
            raise ValidationError(f"ope: propensities must be (requests, slots), got {shape}")
        for name in ("pi", "rewards", "mask", "q_logged", "mu_marginal", "pi_marginal"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != shape:
                raise ValidationError(f"ope: {name} has shape {np.shape(value)}, not {shape}")
        if self.q_target is not None and np.shape(self.q_target) != shape[:1]:
            raise ValidationError(f"ope: q_target has shape {np.shape(self.q_target)}")
        mu = np.asarray(self.mu)[np.asarray(self.mask, dtype=bool)]
        if not len(mu):
            raise ValidationError("ope: no logged slot to estimate from")
        if not ((mu > 0) & (mu <= 1)).all():
            raise ValidationError("ope: logging propensities must be in (0, 1]")

    @property
    def n(self) -> int:
        """Requests."""
        return int(np.shape(self.mu)[0])


def deterministic_target(
    logged: Sequence[Sequence[str]], target: Sequence[Sequence[str]], k: int
) -> np.ndarray:
    """``(n, k)`` conditional probabilities of the logged items under a deterministic target
    with feeds ``target``: 1 at slot ``j`` while the logged slate's first ``j + 1`` items are
    the target's, else 0 (the factors after the first mismatch never matter: the weights
    multiply through it)."""
    out = np.zeros((len(logged), k))
    for i, (shown, wanted) in enumerate(zip(logged, target, strict=True)):
        for j, item in enumerate(shown[:k]):
            if j >= len(wanted) or wanted[j] != item:
                break
            out[i, j] = 1.0
    return out


def check_exploration(mu: np.ndarray, mask: np.ndarray) -> None:
    """Refuse a log whose logging policy never explored.

    Raises:
        ValidationError: every logged propensity is 1.
    """
    shown = np.asarray(mu)[np.asarray(mask, dtype=bool)]
    if len(shown) and np.all(shown >= 1.0 - 1e-12):
        raise ValidationError(
            "ope: every logged propensity is 1: the logging policy never explored, so no "
            "policy that differs from it has support in the log and no estimate is possible; "
            "serve with reranking.exploration (epsilon_greedy or softmax) and log again"
        )


def _per_request(slates: Slates, clip: float | None) -> dict[str, np.ndarray]:
    """Per-request terms of each estimator (their means are the estimates, except snips)."""
    mask = np.asarray(slates.mask, dtype=bool)
    ratio = np.where(mask, np.asarray(slates.pi) / np.asarray(slates.mu), 1.0)
    rewards = np.where(mask, np.asarray(slates.rewards, dtype=np.float64), 0.0)
    weight = ratio.prod(axis=1)
    prefix = np.cumprod(ratio, axis=1)
    if clip is not None:
        weight = np.minimum(weight, clip)
        prefix = np.minimum(prefix, clip)
    total = rewards.sum(axis=1)
    terms = {
        "weight": weight,
        "ips": weight * total,
        "snips_num": weight * total,
        "rips": (prefix * rewards).sum(axis=1),
        "last_prefix": prefix[np.arange(len(prefix)), np.maximum(mask.sum(axis=1) - 1, 0)],
    }
    if slates.q_logged is not None and slates.q_target is not None:
        q_logged = np.where(mask, np.asarray(slates.q_logged, dtype=np.float64), 0.0).sum(axis=1)
        terms["dr"] = np.asarray(slates.q_target, dtype=np.float64) + weight * (total - q_logged)
    if slates.mu_marginal is not None and slates.pi_marginal is not None:
        marginal = np.where(
            mask, np.asarray(slates.pi_marginal) / np.asarray(slates.mu_marginal), 0.0
        )
        if clip is not None:
            marginal = np.minimum(marginal, clip)
        terms["iips"] = (marginal * rewards).sum(axis=1)
    return terms


def _values(terms: dict[str, np.ndarray]) -> dict[str, float]:
    out = {
        name: float(terms[name].mean()) for name in ("ips", "rips", "dr", "iips") if name in terms
    }
    denominator = terms["weight"].sum()
    out["snips"] = (
        float(terms["snips_num"].sum() / denominator) if denominator > 0 else float("nan")
    )
    return out


def _ess(weights: np.ndarray) -> float:
    squares = float((weights**2).sum())
    return float(weights.sum() ** 2 / squares) if squares > 0 else 0.0


def estimate(
    slates: Slates,
    *,
    clip: float | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every estimator the data allows, with bootstrap intervals (see the module docs).

    Args:
        slates: The logged slates and the target's probabilities.
        clip: Largest importance weight (None: no clipping).
        alpha: 1 - the intervals' level.
        n_bootstrap: Bootstrap resamples of the requests.
        seed: The bootstrap's randomness.

    Returns:
        ``{"estimates": {name: {"value", "ci"}}, "ess", "ess_cascade", "support", "n",
        "clip", "clipped"}``.

    Raises:
        ValidationError: the logging policy never explored, or a bad input.
    """
    check_exploration(slates.mu, slates.mask)
    if clip is not None and clip <= 0:
        raise ValidationError(f"ope: clip must be positive, got {clip}")
    terms = _per_request(slates, clip)
    unclipped = _per_request(slates, None)["weight"]
    values = _values(terms)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {name: [] for name in values}
    for _ in range(n_bootstrap):
        pick = rng.integers(0, slates.n, slates.n)
        for name, value in _values({key: v[pick] for key, v in terms.items()}).items():
            boot[name].append(value)
    estimates = {}
    for name, value in values.items():
        samples = np.asarray(boot[name])
        samples = samples[np.isfinite(samples)]
        lo, hi = (
            np.quantile(samples, [alpha / 2, 1 - alpha / 2]) if len(samples) else (np.nan, np.nan)
        )
        estimates[name] = {"value": value, "ci": [float(lo), float(hi)]}
    return {
        "estimates": estimates,
        "n": slates.n,
        "ess": _ess(terms["weight"]),
        "ess_cascade": _ess(terms["last_prefix"]),
        "support": float((terms["weight"] > 0).mean()),
        "clip": clip,
        "clipped": int((unclipped > clip).sum()) if clip is not None else 0,
    }
