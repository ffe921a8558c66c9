"""The re-ranking stage: scored candidates -> the feed that is shown, with propensities.

Applied after the ranker (:mod:`feedforge.serving.pipeline`; seen items were already excluded
at retrieval), configured by :class:`~feedforge.config.ReRankConfig`:

1. **Business rules**, in config order: ``block`` removes matching items (unavailable),
   ``boost`` multiplies their scores by ``factor``, ``bury`` sinks them below every other
   candidate, ``pin`` reserves slot ``position`` for the first matching candidate.
2. **Freshness**: ``score * (1 + freshness_boost * exp(-age_days / freshness_tau_days))``
   (items of unknown age are not boosted). Multiplicative adjustments need positive scores, so
   when there is one and any score is negative (retrieval dot products) the scores become
   ``exp(score - max(score))`` first: the order is unchanged, and a factor ``f`` then adds
   ``log f`` to the raw score.
3. **Slot filling**, one slot at a time, from the remaining candidates that respect
   ``category_cap`` (when every remaining one would break the cap, the cap is relaxed rather
   than the feed cut short). The utility of a candidate is its relevance ``r`` (the adjusted
   score min-max scaled to [0, 1] over the candidates), or with ``mmr_lambda = l`` the maximal
   marginal relevance ``l * r - (1 - l) * max cos(v, placed)`` over the item vectors placed so
   far (Carbonell & Goldstein 1998); buried items' utilities sit below all others.
4. **Exploration** per slot: ``none`` takes the best utility (propensity 1);
   ``epsilon_greedy`` the best with probability ``1 - epsilon``, else a uniform remaining
   item; ``softmax`` samples with probability ``softmax(utility / temperature)``. Each shown
   item's **propensity** is the probability with which it was picked for its slot given the
   slots before it (the Plackett-Luce factor), as off-policy estimators need.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from feedforge.config import BusinessRule, ReRankConfig
from feedforge.errors import ValidationError

_BURIED = 10.0  # utility offset that sinks buried items below every other candidate


@dataclass(frozen=True)
class Candidates:
    """Scored candidates of one request.

    Attributes:
        item_ids: ``C`` item ids.
        scores: ``(C,)`` ranker (or retrieval) scores, higher is better.
        categories: ``C`` primary categories (``""`` when unknown).
        age_days: ``(C,)`` item ages in days (NaN when unknown).
        vectors: ``(C, D)`` item embeddings for MMR, or None.
    """

    item_ids: list[str]
    scores: np.ndarray
    categories: list[str]
    age_days: np.ndarray
    vectors: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        shapes = {
            "scores": np.shape(self.scores),
            "age_days": np.shape(self.age_days),
            "categories": (len(self.categories),),
        }
        bad = {name: shape for name, shape in shapes.items() if shape != (n,)}
        if self.vectors is not None and np.shape(self.vectors)[:1] != (n,):
            bad["vectors"] = np.shape(self.vectors)
        if bad:
            raise ValidationError(f"Candidates: {n} item ids but shapes {bad}")


@dataclass(frozen=True)
class Reranked:
    """The shown feed: items in slot order, their adjusted scores and propensities."""

    item_ids: list[str]
    scores: list[float]
    propensities: list[float]


def _matches(rule: BusinessRule, item_id: str, category: str) -> bool:
    return item_id in rule.item_ids or (category != "" and category in rule.categories)


def is_plain(config: ReRankConfig) -> bool:
    """True when re-ranking is the identity: the feed is the top ``k`` by score."""
    return (
        not config.rules
        and config.category_cap is None
        and config.mmr_lambda is None
        and config.freshness_boost == 0
        and config.exploration.type == "none"
    )


def needs_item_metadata(config: ReRankConfig) -> bool:
    """Whether re-ranking reads the candidates' categories or ages (else the pipeline need not
    fetch item records for it)."""
    return (
        config.category_cap is not None
        or config.freshness_boost > 0
        or any(rule.categories for rule in config.rules)
    )


def pinned_item_ids(config: ReRankConfig) -> list[str]:
    """Item ids named by ``pin`` rules (the pipeline adds them to the candidates)."""
    return [item for rule in config.rules if rule.action == "pin" for item in rule.item_ids]


def adjusted_scores(
    candidates: Candidates, config: ReRankConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores after boosts and freshness, and the blocked and buried masks (steps 1-2)."""
    scores = np.asarray(candidates.scores, dtype=np.float64).copy()
    if not np.isfinite(scores).all():
        raise ValidationError("rerank: candidate scores hold NaN or infinite values")
    n = len(scores)
    multiplies = config.freshness_boost > 0 or any(r.action == "boost" for r in config.rules)
    if multiplies and n and scores.min() < 0:
        scores = np.exp(scores - scores.max())
    blocked = np.zeros(n, dtype=bool)
    buried = np.zeros(n, dtype=bool)
    for rule in config.rules:
        if rule.action not in ("block", "boost", "bury"):
            continue
        pairs = zip(candidates.item_ids, candidates.categories, strict=True)
        hit = np.array([_matches(rule, i, c) for i, c in pairs], dtype=bool)
        if rule.action == "block":
            blocked |= hit
        elif rule.action == "boost":
            scores[hit] *= rule.factor
        else:
            buried |= hit
    if config.freshness_boost > 0:
        age = np.asarray(candidates.age_days, dtype=np.float64)
        fresh = np.where(
            np.isfinite(age), np.exp(-np.maximum(age, 0) / config.freshness_tau_days), 0
        )
        scores *= 1.0 + config.freshness_boost * fresh
    return scores, blocked, buried


def _pins(
    candidates: Candidates, config: ReRankConfig, scores: np.ndarray, blocked: np.ndarray
) -> dict[int, int]:
    """Slot -> candidate index of each pin rule's best matching, unblocked candidate."""
    pins: dict[int, int] = {}
    by_id = {item: j for j, item in enumerate(candidates.item_ids)}
    for rule in config.rules:
        if rule.action != "pin" or rule.position in pins:
            continue
        taken = set(pins.values())
        named = [by_id[i] for i in rule.item_ids if i in by_id]
        in_category = sorted(
            (j for j, c in enumerate(candidates.categories) if c and c in rule.categories),
            key=lambda j: -scores[j],
        )
        for j in (*named, *in_category):
            if not blocked[j] and j not in taken:
                pins[rule.position] = j
                break
    return pins


def request_rng(key: str, seed: int | None) -> np.random.Generator:
    """The randomness of one request (exploration, interleaving coin flips), drawn from its
    key (the request id) and ``exploration.seed``: reproducible from the feed log, different
    for every request. ``seed`` None counts as 0."""
    digest = hashlib.blake2b(f"{seed or 0}:{key}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def rerank(
    candidates: Candidates,
    k: int,
    config: ReRankConfig,
    rng: np.random.Generator | None = None,
) -> Reranked:
    """The top-``k`` feed of one request (see the module docs for each step).

    Args:
        candidates: The scored candidates.
        k: Feed length (fewer items when fewer candidates survive blocking).
        config: The re-ranking settings.
        rng: Randomness of exploration (default: seeded from ``exploration.seed``).

    Raises:
        ValidationError: ``k < 1`` or non-finite scores.
    """
    if k < 1:
        raise ValidationError(f"rerank: k must be >= 1, got {k}")
    return _fill(candidates, k, config, rng, None)


def slate_propensities(
    candidates: Candidates, slate: list[str], config: ReRankConfig
) -> list[float]:
    """The probability with which re-ranking under ``config`` would pick each item of
    ``slate`` for its slot, given the slate's items above it (the Plackett-Luce factors that
    :func:`rerank` logs for the slates it draws). A target policy's propensities of a logged
    feed, for off-policy estimates. After the first item ``config`` could not have placed
    there the rest are 0.
    """
    if not slate:
        return []
    return _fill(candidates, len(slate), config, None, slate).propensities


def _fill(
    candidates: Candidates,
    k: int,
    config: ReRankConfig,
    rng: np.random.Generator | None,
    given: list[str] | None,
) -> Reranked:
    """The slot loop of :func:`rerank`; with ``given``, each slot takes ``given``'s item and
    records the probability the loop had of picking it."""
    scores, blocked, buried = adjusted_scores(candidates, config)
    index = {} if given is None else {item: j for j, item in enumerate(candidates.item_ids)}
    if is_plain(config):  # the request hot path by default: one sort, no slot loop
        top = np.argsort(-scores, kind="stable")[:k]
        if given is not None:
            same = np.cumprod(
                [a == candidates.item_ids[j] for a, j in zip(given, top, strict=False)]
            )
            probs = [float(x) for x in same] + [0.0] * (len(given) - len(same))
            return Reranked(list(given), [0.0] * len(given), probs)
        return Reranked(
            [candidates.item_ids[j] for j in top], [float(scores[j]) for j in top], [1.0] * len(top)
        )
    explore = config.exploration
    if rng is None:
        rng = np.random.default_rng(explore.seed)
    pins = _pins(candidates, config, scores, blocked)
    pool = np.array([j for j in range(len(scores)) if not blocked[j] and j not in pins.values()])
    pool = pool.astype(np.int64)
    span = np.ptp(scores) if len(scores) else 0.0
    relevance = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    vectors = None
    if config.mmr_lambda is not None and candidates.vectors is not None:
        v = np.asarray(candidates.vectors, dtype=np.float64)
        vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    max_sim = np.full(len(scores), -1.0)
    per_category: dict[str, int] = {}
    chosen: list[int] = []
    propensity: list[float] = []
    n_slots = min(k, len(pool) + len(pins))

    def place(j: int, p: float) -> None:
        chosen.append(j)
        propensity.append(p)
        category = candidates.categories[j]
        per_category[category] = per_category.get(category, 0) + 1
        if vectors is not None:
            np.maximum(max_sim, vectors @ vectors[j], out=max_sim)

    if given is not None:
        n_slots = len(given)
    for slot in range(n_slots):
        if given is not None and (
            slot >= len(given)
            or index.get(given[slot]) is None
            or (slot in pins and pins[slot] != index[given[slot]])
        ):
            # An item re-ranking could not place here: this and the later slots have 0.
            propensity += [0.0] * (len(given) - len(propensity))
            chosen += [index.get(g, 0) for g in given[len(chosen) :]]
            break
        if slot in pins:
            place(pins[slot], 1.0)
            continue
        if pool.size == 0:  # only pins beyond the pool remain: shown in slot order
            for later in sorted(s for s in pins if s > slot):
                place(pins[later], 1.0)
            break
        eligible = pool
        if config.category_cap is not None:
            cap = config.category_cap
            ok = np.array([per_category.get(candidates.categories[j], 0) < cap for j in pool])
            if ok.any():
                eligible = pool[ok]
        utility = relevance[eligible]
        if vectors is not None and chosen:
            lam = float(config.mmr_lambda)  # type: ignore[arg-type]
            utility = lam * utility - (1.0 - lam) * max_sim[eligible]
        utility = utility - _BURIED * buried[eligible]
        if given is not None:
            where = np.flatnonzero(eligible == index[given[slot]])
            if not len(where):
                propensity += [0.0] * (len(given) - len(propensity))
                chosen += [index.get(g, 0) for g in given[len(chosen) :]]
                break
            pick = int(where[0])
            p = _probability(utility, pick, explore.type, explore.epsilon, explore.temperature)
        else:
            pick, p = _explore(utility, explore.type, explore.epsilon, explore.temperature, rng)
        j = int(eligible[pick])
        place(j, p)
        pool = pool[pool != j]
    if given is not None:
        return Reranked(list(given), [float(scores[j]) for j in chosen], propensity)
    return Reranked(
        item_ids=[candidates.item_ids[j] for j in chosen],
        scores=[float(scores[j]) for j in chosen],
        propensities=propensity,
    )


def _probability(
    utility: np.ndarray, pick: int, kind: str, epsilon: float, temperature: float
) -> float:
    """The probability :func:`_explore` had of picking position ``pick``."""
    best = int(np.argmax(utility))
    n = len(utility)
    if kind == "none" or n == 1:
        return 1.0 if pick == best else 0.0
    if kind == "epsilon_greedy":
        return min(1.0, (1.0 - epsilon) * (pick == best) + epsilon / n)
    logits = (utility - utility.max()) / temperature
    probs = np.exp(logits)
    probs /= probs.sum()
    return min(1.0, float(probs[pick]))


def _explore(
    utility: np.ndarray, kind: str, epsilon: float, temperature: float, rng: np.random.Generator
) -> tuple[int, float]:
    """Position in ``utility`` picked for a slot, and the probability it had."""
    best = int(np.argmax(utility))  # first maximum: ties keep the candidates' order
    n = len(utility)
    if kind == "none" or n == 1:
        return best, 1.0
    if kind == "epsilon_greedy":
        pick = best if rng.random() >= epsilon else int(rng.integers(n))
        return pick, min(1.0, (1.0 - epsilon) * (pick == best) + epsilon / n)
    logits = (utility - utility.max()) / temperature
    probs = np.exp(logits)
    probs /= probs.sum()
    pick = int(rng.choice(n, p=probs))
    return pick, min(1.0, float(probs[pick]))  # rounding must not push it past 1
