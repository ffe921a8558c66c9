"""The latent state of the synthetic world: users, items and their hidden tastes.

:func:`generate_world` draws a :class:`World` from a
:class:`~feedforge.config.SimulatorConfig` (deterministic in its seed); the world renders the
catalog tables (:meth:`World.items_frame`, :meth:`World.users_frame`) and saves to one
``.npz`` file. The id and timestamp helpers here are shared with the simulator so that ids
always have one format.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from feedforge.config import SimulatorConfig
from feedforge.errors import ArtifactError
from feedforge.events.schema import ITEM_SCHEMA, USER_SCHEMA

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
PRICES = (0.99, 1.99, 2.99, 4.99, 9.99)

ZIPF_EXPONENT = 0.9  # item popularity prior ~ rank ** -ZIPF_EXPONENT
TASTE_CONCENTRATION = 0.1  # Dirichlet concentration of user category taste (lower: pickier)
LATENT_SCALE = 1.0  # std of the user-item latent dot product


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
        return sequential_ids("u", self.n_users)

    def item_ids(self) -> pl.Series:
        """Item ids ``i000000`` ... in index order."""
        return sequential_ids("i", self.n_items)

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
                "created_at": to_timestamps(self.item_created_at_s),
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
                "created_at": to_timestamps(self.user_created_at_s),
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


def seeded_rng(seed: int, *stream: int) -> np.random.Generator:
    """The random stream ``stream`` of ``seed`` (streams are independent of each other)."""
    # SeedSequence needs non-negative entries; masking keeps negative seeds deterministic.
    return np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, *stream])


def format_ids(prefix: str, numbers: npt.NDArray[np.int64], width: int) -> pl.Series:
    """``prefix`` + zero-padded ``numbers`` (padded wider when a number needs it)."""
    width = max(width, len(str(int(numbers.max(initial=0)))))
    digits = pl.Series(numbers, dtype=pl.Int64).cast(pl.String).str.zfill(width)
    return pl.select(pl.concat_str(pl.lit(prefix), digits)).to_series()


def sequential_ids(prefix: str, n: int, start: int = 0, width: int = 6) -> pl.Series:
    """``n`` ids ``prefix`` + ``start``, ``start + 1``, ... zero-padded to ``width``."""
    return format_ids(prefix, np.arange(start, start + n, dtype=np.int64), width)


def to_timestamps(seconds: npt.NDArray[Any]) -> pl.Series:
    """UTC epoch seconds as a microsecond ``Datetime`` series (rounded to the microsecond)."""
    micros = np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return pl.Series(micros).cast(pl.Datetime("us", "UTC"))


def generate_world(config: SimulatorConfig) -> World:
    """Draw the latent world of ``config`` (deterministic in ``config.seed``).

    Users get a sparse Dirichlet(:data:`TASTE_CONCENTRATION`) category taste (most users love
    one to three categories), a ``D=16`` latent vector, a lognormal activity level, a country,
    an age bucket, a preferred device and a sign-up time. Items get 1-3 distinct categories
    (primary first), a latent vector, a Zipf(:data:`ZIPF_EXPONENT`) popularity prior, a creation
    time uniform over ``[start - item_backlog_days, end)``, a lognormal duration (median 30 min,
    2 min to 4 h) and a price (85 % free). Generating 1M items takes about a second.
    """
    rng = seeded_rng(config.seed, 0)
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
