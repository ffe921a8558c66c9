"""A seeded synthetic world: users, items, a user-response model and a logging policy.

This is feedforge's embedded default data. :func:`generate_world` draws the latent world,
:func:`response_probabilities` is the ground-truth user-response model (also used to score
feeds in closed-loop experiments), and :func:`simulate` plays ``n_days`` of feed sessions
through a mixed logging policy and writes the catalog and the event log of a work directory.

Everything is vectorised with numpy and polars; the only Python loops run over days and over
chunks of sessions. The same seed gives identical worlds, catalogs and events.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from feedforge.config import SimulatorConfig
from feedforge.errors import ArtifactError, DataError, ValidationError
from feedforge.events.catalog import write_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import ITEM_SCHEMA, USER_SCHEMA, EventType
from feedforge.workdir import Workdir

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY_S = 86_400
LATENT_DIM = 16
WORLD_FILE = "world.npz"
WORLD_FORMAT = 1

GENRES = (
    "drama", "comedy", "action", "thriller", "documentary", "animation", "romance", "horror",
    "sci-fi", "fantasy", "crime", "family", "music", "sports", "news", "kids", "reality",
    "history", "nature", "travel",
)  # fmt: skip
COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "CA")
COUNTRY_P = (0.35, 0.1, 0.1, 0.08, 0.15, 0.1, 0.07, 0.05)
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_P = (0.2, 0.3, 0.22, 0.15, 0.13)
DEVICES = ("tv", "mobile", "web")
SURFACE = "home"
PRICES = (0.99, 1.99, 2.99, 4.99, 9.99)
# Sessions per hour of day (UTC): a small lunch bump and an evening peak.
_HOURLY = (
    0.2
    + np.exp(-(((np.arange(24) - 20.5) / 2.5) ** 2))
    + 0.4 * np.exp(-(((np.arange(24) - 12.5) / 1.5) ** 2))
)

ZIPF_EXPONENT = 0.9  # item popularity prior ~ rank ** -ZIPF_EXPONENT
TASTE_CONCENTRATION = 0.1  # Dirichlet concentration of user category taste (lower: pickier)
LATENT_SCALE = 1.0  # std of the user-item latent dot product
# Response-model coefficients (see response_probabilities).
B_ATTRACT, W_AFFINITY, W_QUALITY, W_FRESH, FRESH_TAU_DAYS = -3.3, 1.0, 0.35, 0.7, 5.0
B_COMPLETE, W_COMPLETE, BETA_CONCENTRATION = -0.8, 0.6, 3.0
B_LIKE, W_LIKE = -3.5, 0.8
B_BUY, W_BUY, W_PRICE = -3.0, 0.7, 0.4
B_SKIP, W_SKIP = -1.0, -0.5
# Logging policy: uniform exploration, popularity and (noisy) taste shares; catalog pool cap.
POLICY_EXPLORE, POLICY_POPULAR, POLICY_TEMPERATURE, POOL_MAX = 0.15, 0.25, 0.5, 4096


@dataclass(frozen=True, eq=False)
class World:
    """The latent state of a synthetic world. ``U`` users, ``I`` items, ``C`` categories.

    Items are indexed in creation order (``item_created_at_s`` is non-decreasing), like
    auto-increment ids. Times are UTC seconds since the epoch.

    Attributes:
        user_taste: ``(U, C)`` category taste, each row a Dirichlet draw summing to 1.
        user_vectors: ``(U, D)`` latent taste; ``user_vectors @ item_vectors.T`` has std ~1.
        user_activity: ``(U,)`` lognormal activity multiplier with mean ~1.
        user_country: ``(U,)`` index into :data:`COUNTRIES`.
        user_age_bucket: ``(U,)`` index into :data:`AGE_BUCKETS`.
        user_device: ``(U,)`` preferred device, index into :data:`DEVICES`.
        user_created_at_s: ``(U,)`` sign-up times, all before ``start_s``.
        item_category: ``(I, 3)`` category indices, primary first, ``-1`` padded.
        item_vectors: ``(I, D)`` latent item vectors.
        item_quality: ``(I,)`` centred log-popularity prior, Zipf-like (heavy upper tail).
        item_created_at_s: ``(I,)`` creation times, sorted.
        item_duration: ``(I,)`` seconds, lognormal around 30 minutes.
        item_price: ``(I,)`` 0 for free items, else one of :data:`PRICES`.
        category_names: ``(C,)`` category names.
        start_s: Start of the simulation.
        n_days: Length of the simulation in days.
    """

    user_taste: npt.NDArray[np.float32]
    user_vectors: npt.NDArray[np.float32]
    user_activity: npt.NDArray[np.float32]
    user_country: npt.NDArray[np.int8]
    user_age_bucket: npt.NDArray[np.int8]
    user_device: npt.NDArray[np.int8]
    user_created_at_s: IntArray
    item_category: npt.NDArray[np.int16]
    item_vectors: npt.NDArray[np.float32]
    item_quality: npt.NDArray[np.float32]
    item_created_at_s: IntArray
    item_duration: FloatArray
    item_price: FloatArray
    category_names: npt.NDArray[np.str_]
    start_s: int
    n_days: int

    @property
    def n_users(self) -> int:
        return int(self.user_taste.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_vectors.shape[0])

    @property
    def end_s(self) -> int:
        return self.start_s + self.n_days * DAY_S

    def user_ids(self) -> pl.Series:
        """User ids ``u000000`` ... in index order."""
        return _ids("u", self.n_users)

    def item_ids(self) -> pl.Series:
        """Item ids ``i000000`` ... in index order."""
        return _ids("i", self.n_items)

    def items_frame(self) -> pl.DataFrame:
        """The item catalog, typed as :data:`~feedforge.events.schema.ITEM_SCHEMA`."""
        valid = self.item_category >= 0
        offsets = np.zeros(self.n_items + 1, dtype=np.int32)
        np.cumsum(valid.sum(axis=1), out=offsets[1:])
        names = pa.array(self.category_names.tolist(), pa.string())
        values = pc.take(names, pa.array(self.item_category[valid].astype(np.int32)))
        categories = pl.Series("categories", pa.ListArray.from_arrays(pa.array(offsets), values))
        primary = pl.Series(self.category_names.tolist()).gather(self.item_category[:, 0])
        return pl.DataFrame(
            {
                "item_id": self.item_ids(),
                "title": pl.select(
                    pl.format("Item {} ({})", pl.int_range(self.n_items), primary)
                ).to_series(),
                "categories": categories,
                "created_at": _timestamps(self.item_created_at_s),
                "duration_seconds": self.item_duration,
                "price": self.item_price,
            },
            schema=ITEM_SCHEMA,
        )

    def users_frame(self) -> pl.DataFrame:
        """The user table, typed as :data:`~feedforge.events.schema.USER_SCHEMA`."""
        return pl.DataFrame(
            {
                "user_id": self.user_ids(),
                "created_at": _timestamps(self.user_created_at_s),
                "country": pl.Series(COUNTRIES).gather(self.user_country),
                "age_bucket": pl.Series(AGE_BUCKETS).gather(self.user_age_bucket),
            },
            schema=USER_SCHEMA,
        )

    def save(self, path: Path | str) -> None:
        """Write the world to one ``.npz`` file (atomically; never pickled)."""
        path = Path(path)
        arrays: dict[str, Any] = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, format_version=np.asarray(WORLD_FORMAT), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path | str) -> World:
        """Read a world written by :meth:`save`.

        Raises:
            ArtifactError: the file is missing, corrupt or of an unknown format version.
        """
        path = Path(path)
        build = "feedforge simulate"
        if not path.is_file():
            raise ArtifactError(path, "missing simulator world", build)
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["format_version"])
                if version != WORLD_FORMAT:
                    raise ArtifactError(path, f"unknown world format {version}", build)
                values: dict[str, Any] = {f.name: data[f.name] for f in fields(cls)}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ArtifactError(path, f"corrupt simulator world ({exc})", build) from exc
        values["start_s"] = int(values["start_s"])
        values["n_days"] = int(values["n_days"])
        return cls(**values)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    # SeedSequence needs non-negative entries; masking keeps negative seeds deterministic.
    return np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, *stream])


def _format_ids(prefix: str, numbers: npt.NDArray[np.int64], width: int) -> pl.Series:
    """``prefix`` + zero-padded ``numbers`` (padded wider when a number needs it)."""
    width = max(width, len(str(int(numbers.max(initial=0)))))
    digits = pl.Series(numbers, dtype=pl.Int64).cast(pl.String).str.zfill(width)
    return pl.select(pl.concat_str(pl.lit(prefix), digits)).to_series()


def _ids(prefix: str, n: int, start: int = 0, width: int = 6) -> pl.Series:
    return _format_ids(prefix, np.arange(start, start + n, dtype=np.int64), width)


def _timestamps(seconds: npt.NDArray[Any]) -> pl.Series:
    micros = np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return pl.Series(micros).cast(pl.Datetime("us", "UTC"))


def _sigmoid(x: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def generate_world(config: SimulatorConfig) -> World:
    """Draw the latent world of ``config`` (deterministic in ``config.seed``).

    Users get a sparse Dirichlet(:data:`TASTE_CONCENTRATION`) category taste (most users love
    one to three categories), a ``D=16`` latent vector, a lognormal activity level, a country,
    an age bucket, a preferred device and a sign-up time. Items get 1-3 distinct categories
    (primary first), a latent vector, a Zipf(:data:`ZIPF_EXPONENT`) popularity prior, a creation
    time uniform over ``[start - item_backlog_days, end)``, a lognormal duration (median 30 min,
    2 min to 4 h) and a price (85 % free). Generating 1M items takes about a second.
    """
    rng = _rng(config.seed, 0)
    n_u, n_i, n_c, dim = config.n_users, config.n_items, config.n_categories, LATENT_DIM
    start_s = int(config.start.timestamp())
    scale = np.float32(dim**-0.25)  # makes a user-item dot product have std ~1

    sigma = 0.8
    users: dict[str, Any] = {
        "user_taste": rng.dirichlet(np.full(n_c, TASTE_CONCENTRATION), size=n_u).astype(np.float32),
        "user_vectors": rng.standard_normal((n_u, dim), dtype=np.float32) * (scale * LATENT_SCALE),
        "user_activity": rng.lognormal(-0.5 * sigma**2, sigma, n_u).astype(np.float32),
        "user_country": rng.choice(len(COUNTRIES), n_u, p=COUNTRY_P).astype(np.int8),
        "user_age_bucket": rng.choice(len(AGE_BUCKETS), n_u, p=AGE_P).astype(np.int8),
        "user_device": rng.choice(len(DEVICES), n_u, p=(0.35, 0.45, 0.2)).astype(np.int8),
        "user_created_at_s": start_s - rng.integers(1, 730 * DAY_S, n_u),
    }

    # Up to three distinct categories: random offsets from the primary, the second skipped.
    n_cats = np.minimum(rng.choice(3, n_i, p=(0.5, 0.35, 0.15)) + 1, n_c)
    primary = rng.choice(n_c, n_i, p=rng.dirichlet(np.full(n_c, 5.0)))
    off1 = rng.integers(1, max(n_c, 2), n_i)
    off2 = rng.integers(1, max(n_c - 1, 2), n_i)
    off2 += off2 >= off1
    category = np.stack([primary, (primary + off1) % n_c, (primary + off2) % n_c], axis=1)
    category[np.arange(3)[None, :] >= n_cats[:, None]] = -1

    ranks = rng.permutation(n_i).astype(np.float64) + 1.0
    log_pop = -ZIPF_EXPONENT * np.log(ranks)
    span = (config.item_backlog_days + config.n_days) * DAY_S
    created = np.sort(start_s - config.item_backlog_days * DAY_S + rng.integers(0, span, n_i))
    duration = np.clip(rng.lognormal(np.log(1800.0), 0.5, n_i), 120.0, 4 * 3600.0)
    price = np.where(rng.random(n_i) < 0.15, rng.choice(PRICES, n_i), 0.0)
    names = [GENRES[c] if c < len(GENRES) else f"category_{c:02d}" for c in range(n_c)]
    return World(
        **users,
        item_category=category.astype(np.int16),
        item_vectors=rng.standard_normal((n_i, dim), dtype=np.float32) * scale,
        item_quality=(log_pop - log_pop.mean()).astype(np.float32),
        item_created_at_s=created.astype(np.int64),
        item_duration=np.round(duration).astype(np.float64),
        item_price=price,
        category_names=np.array(names, dtype=np.str_),
        start_s=start_s,
        n_days=config.n_days,
    )


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


def _affinity_matrix(
    world: World, users: IntArray, items: IntArray, latent_weight: float
) -> npt.NDArray[np.float32]:
    """``(S, P)`` float32 affinities of ``users`` to ``items`` via two matrix products."""
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
    - attraction: ``r = sigma(-3 + a + 0.35 q + 0.7 exp(-age / 5))``
    - click = examined AND attracted: ``p_click = e * r``
    - completion fraction ``c ~ Beta(3 m, 3 (1 - m))`` with ``m = sigma(-0.3 + 0.6 a)``;
      watch seconds = duration * c, so ``expected_watch_seconds = p_click * duration * m``
    - like: ``P(like | click, c) = c * sigma(-1.2 + 0.8 a)``
    - purchase (priced items only): ``P(buy | click) = sigma(-1.5 + 0.7 a - 0.4 log1p(price))``
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


def _logging_policy(
    world: World,
    rng: np.random.Generator,
    users: IntArray,
    times: FloatArray,
    feed_size: int,
    watched: sparse.csr_array,
) -> IntArray:
    """Pick the feeds of sessions ``(users, times)``: an ``(S, feed_size)`` item matrix.

    Feeds are weighted samples without replacement (drawn order = position) from the mixture
    ``0.15 uniform + 0.25 popularity + 0.6 softmax(policy affinity)`` over items created
    before the session and not yet clicked by the user on an earlier day. The policy affinity
    sees the category taste fully but only half of the latent term, so logs cover the catalog
    while leaving room for learned models. Catalogs larger than :data:`POOL_MAX` are scored on a
    candidate pool (half uniform, half popularity draws) per chunk of sessions. Slots that
    cannot be filled hold ``-1`` (they trail the filled ones).
    """
    n_avail = int(np.searchsorted(world.item_created_at_s, times.max(initial=0), side="right"))
    feeds = np.full((len(users), feed_size), -1, dtype=np.int64)
    if n_avail == 0 or len(users) == 0:
        return feeds
    pop = np.exp(world.item_quality[:n_avail])
    cum_pop = np.cumsum(pop, dtype=np.float64)
    chunk = max(1, 2_000_000 // min(n_avail, POOL_MAX))
    for lo in range(0, len(users), chunk):
        u, t = users[lo : lo + chunk], times[lo : lo + chunk]
        if n_avail <= POOL_MAX:
            pool = np.arange(n_avail)
        else:
            draws = rng.random(POOL_MAX // 2) * cum_pop[-1]
            popular = np.minimum(np.searchsorted(cum_pop, draws, side="right"), n_avail - 1)
            pool = np.unique(np.concatenate([rng.integers(0, n_avail, POOL_MAX // 2), popular]))
        valid = world.item_created_at_s[pool][None, :] <= t[:, None]
        valid &= watched[u][:, pool].toarray() == 0
        n_valid = valid.sum(axis=1, keepdims=True, dtype=np.float32)
        logits = _affinity_matrix(world, u, pool, 0.5)
        logits *= np.float32(1.0 / POLICY_TEMPERATURE)
        logits[~valid] = -np.inf
        with np.errstate(divide="ignore", invalid="ignore"):  # rows without a valid item
            peak = logits.max(axis=1, keepdims=True)
            mix = np.exp(logits - np.where(n_valid > 0, peak, 0), out=logits)
            mix *= np.float32(1 - POLICY_EXPLORE - POLICY_POPULAR) / mix.sum(axis=1, keepdims=True)
            popular_w = valid * pop[pool]
            popular_w *= np.float32(POLICY_POPULAR) / popular_w.sum(axis=1, keepdims=True)
            mix += popular_w
            mix += valid * (np.float32(POLICY_EXPLORE) / n_valid)
            # Exponential races: the k smallest E_i / w_i are a weighted sample without
            # replacement, in order (the same law as Gumbel-top-k on log w).
            key = rng.standard_exponential(mix.shape, dtype=np.float32) / mix
        key[~valid] = np.inf
        k = min(feed_size, len(pool))
        top = np.argpartition(key, k - 1, axis=1)[:, :k]
        top_key = np.take_along_axis(key, top, 1)
        order = np.argsort(top_key, axis=1, kind="stable")
        top, top_key = np.take_along_axis(top, order, 1), np.take_along_axis(top_key, order, 1)
        picked = pool[top]
        picked[~np.isfinite(top_key)] = -1
        feeds[lo : lo + chunk, :k] = picked
    return feeds


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate` wrote.

    Attributes:
        counts: Events per event type.
        n_requests: Feed requests (sessions) with at least one impression.
        seconds: Wall-clock duration of the simulation.
    """

    n_users: int
    n_items: int
    n_days: int
    n_requests: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_events(self) -> int:
        return sum(self.counts.values())


_SIM_TYPES = (
    EventType.IMPRESSION,
    EventType.CLICK,
    EventType.WATCH,
    EventType.LIKE,
    EventType.PURCHASE,
    EventType.SKIP,
)


class _Day(NamedTuple):
    frame: pl.DataFrame
    n_requests: int
    clicked_users: IntArray
    clicked_items: IntArray


def _simulate_day(
    world: World,
    config: SimulatorConfig,
    day: int,
    watched: sparse.csr_array,
    ids: tuple[pl.Series, pl.Series],
    first_event: int,
    first_request: int,
) -> _Day:
    """Sessions, feeds and sampled responses of one day, as an event frame."""
    rng = _rng(config.seed, 1, day)
    n_sessions = rng.poisson(world.user_activity * config.sessions_per_user_day)
    users = np.repeat(np.arange(world.n_users), n_sessions)
    hours = rng.choice(24, len(users), p=_HOURLY / _HOURLY.sum())
    times = world.start_s + day * DAY_S + (hours + rng.random(len(users))) * 3600.0
    order = np.argsort(times, kind="stable")
    users, times = users[order], times[order]
    own = rng.random(len(users)) < 0.7
    devices = np.where(own, world.user_device[users], rng.integers(0, len(DEVICES), len(users)))

    feeds = _logging_policy(world, rng, users, times, config.feed_size, watched)
    sess, pos = np.nonzero(feeds >= 0)  # row-major: sessions in time order, positions 0..
    user, item, t0 = users[sess], feeds[sess, pos], times[sess]
    r = response_probabilities(world, user, item, pos, t0)
    n = len(sess)
    examined = rng.random(n) < r.p_examine
    attracted = rng.random(n) < r.p_attract
    click = examined & attracted
    n_click = int(click.sum())
    m = np.clip(r.completion_mean[click], 1e-6, 1 - 1e-6)
    completion = rng.beta(BETA_CONCENTRATION * m, BETA_CONCENTRATION * (1 - m))
    like = rng.random(n_click) < completion * r.like_rate[click]
    buy = rng.random(n_click) < r.p_purchase_given_click[click]
    skip = examined & ~attracted & (rng.random(n) < r.skip_rate)

    # Follow-ups are stamped within ~2 minutes of the impression (inside any attribution
    # window); the watch event is logged at playback start and carries the total seconds.
    t_click = t0[click] + 2.0 + 2.0 * pos[click] + rng.exponential(3.0, n_click)
    t_buy = t_click + rng.uniform(5.0, 20.0, n_click)
    t_watch = t_click + rng.uniform(25.0, 30.0, n_click)
    t_like = t_watch + rng.uniform(10.0, 60.0, n_click)
    t_skip = t0[skip] + 1.0 + 1.5 * pos[skip] + rng.exponential(2.0, int(skip.sum()))
    clicked = np.flatnonzero(click)
    parts = [
        (np.arange(n), t0),
        (clicked, t_click),
        (clicked, t_watch),
        (clicked[like], t_like[like]),
        (clicked[buy], t_buy[buy]),
        (np.flatnonzero(skip), t_skip),
    ]
    watch_seconds = np.full(n, np.nan)
    watch_seconds[click] = np.round(world.item_duration[item[click]] * completion, 1)

    code = np.concatenate([np.full(len(ix), c, np.int64) for c, (ix, _) in enumerate(parts)])
    imp = np.concatenate([ix for ix, _ in parts])
    ts = np.concatenate([ts for _, ts in parts])
    order = np.lexsort((code, imp, ts))
    code, imp, ts = code[order], imp[order], ts[order]
    is_watch = code == _SIM_TYPES.index(EventType.WATCH)
    is_buy = code == _SIM_TYPES.index(EventType.PURCHASE)
    sessions, request = np.unique(sess, return_inverse=True)
    request += first_request
    frame = pl.DataFrame(
        {
            "event_id": _ids(f"ev{config.seed}-", len(imp), start=first_event, width=9),
            "timestamp": _timestamps(ts),
            "user_id": ids[0].gather(user[imp]),
            "item_id": ids[1].gather(item[imp]),
            "event_type": pl.Series([e.value for e in _SIM_TYPES]).gather(code),
            "watch_seconds": pl.Series(np.where(is_watch, watch_seconds[imp], np.nan)),
            "price": pl.Series(np.where(is_buy, world.item_price[item[imp]], np.nan)),
            "request_id": _format_ids(f"rq{config.seed}-", request[imp], 8),
            "position": pl.Series(pos[imp], dtype=pl.Int32),
            "surface": pl.repeat(SURFACE, len(imp), eager=True),
            "device": pl.Series(DEVICES).gather(devices[sess[imp]]),
        }
    ).with_columns(pl.col("watch_seconds", "price").fill_nan(None))
    return _Day(frame, len(sessions), user[click], item[click])


def simulate(
    config: SimulatorConfig,
    workdir: Workdir,
    progress: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
) -> SimulationSummary:
    """Simulate ``config.n_days`` of feed sessions into a work directory.

    Writes the catalog (items, users, manifest with the simulator config), the world
    (``raw/catalog/world.npz``, for ground-truth evaluation) and one event-log append per day.
    Each day, user ``u`` has ``Poisson(activity_u * sessions_per_user_day)`` sessions at
    random times (evening peak); each session is one ``home`` feed request of up to
    ``feed_size`` impressions picked by the logging policy, followed by sampled clicks,
    watches, likes, purchases and skips (see :func:`response_probabilities`).

    Args:
        config: Size, seed and behaviour of the world.
        workdir: The work directory to fill.
        progress: Called as ``progress(day + 1, n_days)`` after each day.
        overwrite: Delete ``workdir/raw`` (catalog and event log) first.

    Returns:
        Counts of what was written.

    Raises:
        DataError: the work directory already holds an event log and ``overwrite`` is false.
    """
    began = time.perf_counter()
    log = EventLog(workdir.events_dir)
    if log.files():
        if not overwrite:
            raise DataError(
                f"{workdir.events_dir} already holds an event log; simulate into a fresh "
                "--workdir (or overwrite it)",
                path=str(workdir.events_dir),
            )
        shutil.rmtree(workdir.root / "raw")
    world = generate_world(config)
    workdir.catalog_dir.mkdir(parents=True, exist_ok=True)
    world.save(workdir.catalog_dir / WORLD_FILE)
    write_catalog(
        workdir,
        world.items_frame(),
        world.users_frame(),
        extra={
            "source": "simulator",
            "simulator": config.model_dump(mode="json"),
            "world": WORLD_FILE,
        },
    )
    counts = dict.fromkeys((e.value for e in _SIM_TYPES), 0)
    watched = sparse.csr_array((world.n_users, world.n_items), dtype=np.int8)
    ids = (world.user_ids(), world.item_ids())
    n_events = n_requests = 0
    for day in range(config.n_days):
        result = _simulate_day(world, config, day, watched, ids, n_events, n_requests)
        log.append(result.frame, where="simulator")
        for kind, n in result.frame.get_column("event_type").value_counts().iter_rows():
            counts[kind] += n
        n_events += result.frame.height
        n_requests += result.n_requests
        new = sparse.csr_array(
            (
                np.ones(len(result.clicked_users), np.int8),
                (result.clicked_users, result.clicked_items),
            ),
            shape=watched.shape,
        )
        watched = ((watched + new) > 0).astype(np.int8)
        if progress is not None:
            progress(day + 1, config.n_days)
    return SimulationSummary(
        n_users=world.n_users,
        n_items=world.n_items,
        n_days=config.n_days,
        n_requests=n_requests,
        counts=counts,
        seconds=time.perf_counter() - began,
    )
