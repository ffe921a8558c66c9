"""The ground-truth user-response model of the synthetic world.

:func:`response_probabilities` gives, for (user, item, feed position, time), the probability
of each outcome of an impression (examination, click, completion, like, purchase, skip). The
simulator samples its events from it, and closed-loop experiments use it to score feeds
(:func:`expected_watch_seconds`). :func:`affinity` is the user-item taste both build on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from feedforge.errors import ValidationError
from feedforge.events.world import DAY_S, FloatArray, IntArray, World

# Response-model coefficients (see response_probabilities).
B_ATTRACT, W_AFFINITY, W_QUALITY, W_FRESH, FRESH_TAU_DAYS = -3.3, 1.0, 0.35, 0.7, 5.0
B_COMPLETE, W_COMPLETE, BETA_CONCENTRATION = -0.8, 0.6, 3.0
B_LIKE, W_LIKE = -3.5, 0.8
B_BUY, W_BUY, W_PRICE = -3.0, 0.7, 0.4
B_SKIP, W_SKIP = -1.0, -0.5


def _sigmoid(x: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


# Weight of each of an item's categories, by its number of categories (primary first).
_CATEGORY_WEIGHTS = np.array([[0, 0, 0], [1, 0, 0], [0.6, 0.4, 0], [0.6, 0.2, 0.2]])


def affinity(
    world: World, user_idx: npt.ArrayLike, item_idx: npt.ArrayLike, latent_weight: float = 1.0
) -> FloatArray:
    """Affinity of users to items: ``log(C * m + 0.1) + latent_weight * <u, v>``.

    ``m = sum_j w_j * user_taste[u, cat_j]`` is the user's taste for the item's categories,
    weighted 1 / (0.6, 0.4) / (0.6, 0.2, 0.2) for items with 1/2/3 categories, so a user
    with uniform taste scores ``log(1.1)``; ``<u, v>`` is the latent dot product (std ~1).

    Args:
        world: The world.
        user_idx: User indices, any shape broadcastable with ``item_idx``.
        item_idx: Item indices.
        latent_weight: Scale of the latent term (the logging policy sees it only partly).

    Returns:
        Affinities of the broadcast shape.
    """
    u, i = np.broadcast_arrays(np.asarray(user_idx, np.int64), np.asarray(item_idx, np.int64))
    cats = world.item_category[i].astype(np.int64)
    weights = _CATEGORY_WEIGHTS[(cats >= 0).sum(axis=-1)]
    mix = (weights * world.user_taste[u[..., None], np.maximum(cats, 0)]).sum(axis=-1)
    latent = np.einsum("...d,...d->...", world.user_vectors[u], world.item_vectors[i])
    n_c = world.user_taste.shape[1]
    return np.log(n_c * mix + 0.1) + latent_weight * latent.astype(np.float64)


def affinity_matrix(
    world: World, users: IntArray, items: IntArray, latent_weight: float
) -> npt.NDArray[np.float32]:
    """``(S, P)`` float32 affinities of ``users`` (``(S,)``) to ``items`` (``(P,)``).

    The all-pairs form of :func:`affinity`, computed with two matrix products (the logging
    policy scores whole candidate pools with it); equal to
    ``affinity(world, users[:, None], items[None, :], latent_weight)`` up to float32 rounding.
    """
    cats = world.item_category[items].astype(np.int64)
    weights = _CATEGORY_WEIGHTS[(cats >= 0).sum(axis=1)]
    valid = cats >= 0
    item_cat = np.zeros((len(items), world.user_taste.shape[1]), dtype=np.float32)
    item_cat[np.nonzero(valid)[0], cats[valid]] = weights[valid]
    mix = world.user_taste[users] @ item_cat.T
    latent = world.user_vectors[users] @ world.item_vectors[items].T
    n_c = world.user_taste.shape[1]
    mix *= n_c
    mix += 0.1
    out = np.log(mix, out=mix)
    out += np.float32(latent_weight) * latent
    return out


@dataclass(frozen=True)
class ResponseProbabilities:
    """Per-impression outcome probabilities; every field has the broadcast input shape.

    ``*_given_click`` fields are conditional on a click and ``like_rate`` / ``skip_rate`` are
    the factors of the conditional like and skip probabilities; the others are per impression.
    """

    affinity: FloatArray
    p_examine: FloatArray
    p_attract: FloatArray
    p_click: FloatArray
    completion_mean: FloatArray
    expected_watch_seconds: FloatArray
    like_rate: FloatArray
    p_like_given_click: FloatArray
    p_like: FloatArray
    p_purchase_given_click: FloatArray
    p_purchase: FloatArray
    expected_revenue: FloatArray
    skip_rate: FloatArray
    p_skip: FloatArray


def response_probabilities(
    world: World,
    user_idx: npt.ArrayLike,
    item_idx: npt.ArrayLike,
    position: npt.ArrayLike,
    now_s: npt.ArrayLike,
) -> ResponseProbabilities:
    """The ground-truth user-response model, vectorised over (user, item, position, time).

    With ``a`` the :func:`affinity`, ``q`` the item's quality, ``age`` its age in days at
    ``now_s`` and ``sigma`` the logistic function:

    - examination (position bias): ``e = 1 / log2(position + 2)``
    - attraction: ``r = sigma(-3.3 + a + 0.35 q + 0.7 exp(-age / 5))``
    - click = examined AND attracted: ``p_click = e * r``
    - completion fraction ``c ~ Beta(3 m, 3 (1 - m))`` with ``m = sigma(-0.8 + 0.6 a)``;
      watch seconds = duration * c, so ``expected_watch_seconds = p_click * duration * m``
    - like: ``P(like | click, c) = c * sigma(-3.5 + 0.8 a)``
    - purchase (priced items only): ``P(buy | click) = sigma(-3.0 + 0.7 a - 0.4 log1p(price))``
    - skip (examined, not attracted): ``p_skip = e * (1 - r) * sigma(-1 - 0.5 a)``

    Args:
        world: The world.
        user_idx: User indices.
        item_idx: Item indices.
        position: 0-based feed positions (>= 0).
        now_s: Impression times, UTC seconds since the epoch.

    Returns:
        The probabilities and expectations, in the broadcast shape of the inputs.

    Raises:
        ValidationError: a position is negative.
    """
    u, i, pos, now = np.broadcast_arrays(
        np.asarray(user_idx, np.int64),
        np.asarray(item_idx, np.int64),
        np.asarray(position, np.int64),
        np.asarray(now_s, np.float64),
    )
    if pos.size and pos.min() < 0:
        raise ValidationError("positions must be >= 0")
    a = affinity(world, u, i)
    age_days = np.maximum(now - world.item_created_at_s[i], 0.0) / DAY_S
    examine = 1.0 / np.log2(pos + 2.0)
    fresh = np.exp(-age_days / FRESH_TAU_DAYS)
    attract = _sigmoid(
        B_ATTRACT + W_AFFINITY * a + W_QUALITY * world.item_quality[i] + W_FRESH * fresh
    )
    click = examine * attract
    completion = _sigmoid(B_COMPLETE + W_COMPLETE * a)
    like_rate = _sigmoid(B_LIKE + W_LIKE * a)
    skip_rate = _sigmoid(B_SKIP + W_SKIP * a)
    price = world.item_price[i]
    buy = np.where(price > 0, _sigmoid(B_BUY + W_BUY * a - W_PRICE * np.log1p(price)), 0.0)
    return ResponseProbabilities(
        affinity=a,
        p_examine=examine,
        p_attract=attract,
        p_click=click,
        completion_mean=completion,
        expected_watch_seconds=click * world.item_duration[i] * completion,
        like_rate=like_rate,
        p_like_given_click=completion * like_rate,
        p_like=click * completion * like_rate,
        p_purchase_given_click=buy,
        p_purchase=click * buy,
        expected_revenue=click * buy * price,
        skip_rate=skip_rate,
        p_skip=examine * (1.0 - attract) * skip_rate,
    )


def expected_watch_seconds(
    world: World,
    user_idx: npt.ArrayLike,
    item_idx: npt.ArrayLike,
    position: npt.ArrayLike,
    now_s: npt.ArrayLike,
) -> FloatArray:
    """Ground-truth expected watch seconds of impressions (see :func:`response_probabilities`).

    The value of a feed ``items[0..k-1]`` shown to ``user`` at ``now_s`` is
    ``expected_watch_seconds(world, user, items, np.arange(k), now_s).sum()``.
    """
    return response_probabilities(world, user_idx, item_idx, position, now_s).expected_watch_seconds
