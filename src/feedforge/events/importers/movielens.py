"""Readers of the GroupLens MovieLens releases (ML-100K, ML-1M, ML-10M, ML-20M, ML-25M, latest).

Three file layouts cover them all:

* ``ml-100k``: ``u.data`` (tab-separated ``user item rating timestamp``), ``u.item``
  (``|``-separated, 5 fields and 19 genre flags), optional ``u.user`` (``id|age|gender|
  occupation|zip``) and ``u.genre`` (``name|index``). Latin-1.
* ``::`` files (``ml-1m``, and ``ml-10m`` as GroupLens ships it): ``ratings.dat``
  (``user::item::rating::timestamp``), ``movies.dat`` (``id::title::Genre|Genre``) and, for
  ML-1M, an optional ``users.dat`` (``id::gender::age code::occupation::zip``). Latin-1.
* CSV with a header (``ml-20m``, ``ml-25m``, ``ml-latest``, ``ml-latest-small``, and ``ml-10m``
  when it comes as CSV): ``ratings.csv`` (``userId,movieId,rating,timestamp``) and
  ``movies.csv`` (``movieId,title,genres``, titles quoted when they hold a comma). UTF-8.

Ids are integers (kept as Int64 until written, in canonical decimal form). Metadata files are
read by :mod:`.movielens_meta`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from feedforge.errors import ValidationError
from feedforge.events.importers.fields import (
    int_id,
    latest_allowed,
    number,
    number_rule,
    present_rule,
    timestamp_rule,
    unix_seconds,
)
from feedforge.events.importers.movielens_meta import (
    genres_100k,
    items_100k,
    movies_csv,
    movies_dat,
    users_100k,
    users_dat,
)
from feedforge.events.importers.parsed import INTERACTIONS, Parsed, dataset_file, typed
from feedforge.events.importers.text import (
    TextFile,
    csv_with_columns,
    fast_numeric,
    field_count_rule,
    split_lines,
    validated,
)


@dataclass(frozen=True)
class Layout:
    """The files of one MovieLens layout and how to read them."""

    ratings: str
    items: str
    users: str | None
    describe: str
    read: Callable[[Path, Layout, str], Parsed]


_FAST_RATINGS: dict[str, pl.DataType] = {
    "user_id": pl.Int64(),
    "item_id": pl.Int64(),
    "value": pl.Float64(),
    "timestamp": pl.Int64(),
}


def _fast_ratings(
    text: TextFile, separator: str, columns: dict[str, pl.DataType | None], *, header: bool
) -> pl.DataFrame | None:
    """The fast path of a rating file (see :func:`fast_numeric`), or None."""
    frame = fast_numeric(text, separator, columns, header=header)
    if frame is None:
        return None
    frame = frame.rename(dict(zip(frame.columns, _FAST_RATINGS, strict=True)))
    if frame.select((pl.col("timestamp") > latest_allowed().timestamp()).any()).item():
        return None
    return frame.with_columns(unix_seconds(pl.col("timestamp")))


def _ratings_split(text: TextFile, separator: str, label: str) -> pl.DataFrame:
    """``user item rating timestamp`` lines with a literal separator (u.data, ratings.dat)."""
    # "a::b" split on ":" gives "a", "", "b": the fast path reads "::" files as ":" files
    # whose even fields must be empty.
    spacer = {f"_{i}": None for i in range(3)} if separator == "::" else {}
    fields = dict(zip(("u", "i", "r", "t"), _FAST_RATINGS.values(), strict=True))
    columns: dict[str, pl.DataType | None] = {}
    for i, (name, dtype) in enumerate(fields.items()):
        columns[name] = dtype
        if spacer and i < 3:
            columns[f"_{i}"] = None
    fast = _fast_ratings(text, separator[0], columns, header=False)
    if fast is not None:
        return typed(fast, INTERACTIONS)
    what = f"{label}-separated fields (user id, item id, rating, unix timestamp)"
    user, item, rating = int_id("user"), int_id("item"), number("rating")
    stamp = unix_seconds(pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False))
    frame = validated(
        text,
        split_lines(text, separator, ("user", "item", "rating", "timestamp")),
        {"user_id": user, "item_id": item, "timestamp": stamp, "value": rating},
        [
            field_count_rule(4, what),
            present_rule(user, "an integer user id in field 1"),
            present_rule(item, "an integer item id in field 2"),
            number_rule(rating, "a numeric rating in field 3"),
            *timestamp_rule(stamp, "a unix timestamp in integer seconds in field 4"),
        ],
        expected=f"lines of 4 {what}",
    )
    return typed(frame, INTERACTIONS)


def _ratings_csv(path: Path) -> pl.DataFrame:
    text = TextFile.utf8(path)
    names = ("userId", "movieId", "rating", "timestamp")
    columns = dict(zip(names, _FAST_RATINGS.values(), strict=True))
    fast = _fast_ratings(text, ",", dict(columns), header=True)
    if fast is not None:
        return typed(fast, INTERACTIONS)
    rows, diagnose = csv_with_columns(text, names)
    user, item, rating = int_id("userId"), int_id("movieId"), number("rating")
    stamp = unix_seconds(pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False))
    frame = validated(
        text,
        rows,
        {"user_id": user, "item_id": item, "timestamp": stamp, "value": rating},
        [
            present_rule(user, "an integer userId in column 1"),
            present_rule(item, "an integer movieId in column 2"),
            number_rule(rating, "a numeric rating in column 3"),
            *timestamp_rule(stamp, "a unix timestamp in integer seconds in column 4"),
        ],
        diagnose,
        expected="rows of " + ",".join(names),
    )
    return typed(frame, INTERACTIONS)


def _read_100k(directory: Path, layout: Layout, source: str) -> Parsed:
    ratings = dataset_file(directory, layout.ratings, source, layout.describe)
    items = dataset_file(directory, layout.items, source, layout.describe)
    users = directory / "u.user"
    return Parsed(
        interactions=_ratings_split(TextFile.utf8(ratings, lossy=True), "\t", "tab"),
        files=(ratings, items, *([users] if users.is_file() else [])),
        items=items_100k(items, genres_100k(directory)),
        users=users_100k(users) if users.is_file() else None,
    )


def _read_dat(directory: Path, layout: Layout, source: str) -> Parsed:
    ratings = dataset_file(directory, layout.ratings, source, layout.describe)
    items = dataset_file(directory, layout.items, source, layout.describe)
    users = directory / "users.dat"
    return Parsed(
        # Numbers only: read leniently, so a stray Latin-1 byte fails its line's number check.
        interactions=_ratings_split(TextFile.utf8(ratings, lossy=True), "::", "'::'"),
        files=(ratings, items, *([users] if users.is_file() else [])),
        items=movies_dat(items),
        users=users_dat(users) if users.is_file() else None,
    )


def _read_csv(directory: Path, layout: Layout, source: str) -> Parsed:
    ratings = dataset_file(directory, layout.ratings, source, layout.describe)
    items = dataset_file(directory, layout.items, source, layout.describe)
    return Parsed(
        interactions=_ratings_csv(ratings), files=(ratings, items), items=movies_csv(items)
    )


ML100K = Layout(
    "u.data",
    "u.item",
    "u.user",
    "u.data (user<TAB>item<TAB>rating<TAB>timestamp), u.item (id|title|release date|video "
    "release date|url|19 genre flags), optional u.user (id|age|gender|occupation|zip) and "
    "u.genre (name|index)",
    _read_100k,
)
DAT = Layout(
    "ratings.dat",
    "movies.dat",
    "users.dat",
    "ratings.dat (user::movie::rating::timestamp), movies.dat (id::title::Genre|Genre), "
    "optional users.dat (id::gender::age::occupation::zip)",
    _read_dat,
)
CSV = Layout(
    "ratings.csv",
    "movies.csv",
    None,
    "ratings.csv (userId,movieId,rating,timestamp) and movies.csv (movieId,title,genres), "
    "each with a header line",
    _read_csv,
)

LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "ml-100k": (ML100K,),
    "ml-1m": (DAT,),
    "ml-10m": (DAT, CSV),
    "ml-20m": (CSV,),
    "ml-25m": (CSV,),
    "ml-latest": (CSV,),
    "ml-latest-small": (CSV,),
}
"""Each MovieLens source and its layouts, tried in order (the first whose ratings file exists)."""


def read_movielens(source: str, directory: Path) -> Parsed:
    """Read and validate a MovieLens directory.

    Raises:
        ValidationError: the path is not a directory, a required file is missing, or a file
            is malformed (the message names the file and the line).
    """
    layouts = LAYOUTS[source]
    describe = " or ".join(layout.describe for layout in layouts)
    if not directory.is_dir():
        raise ValidationError(
            f"{source}: {directory} is not a directory; expected the {source} directory "
            f"holding {describe}",
            path=str(directory),
        )
    layout = next((x for x in layouts if (directory / x.ratings).is_file()), None)
    if layout is None:
        names = " or ".join(x.ratings for x in layouts)
        raise ValidationError(
            f"{source}: missing {names} in {directory}; expected the {source} layout: {describe}",
            path=str(directory),
        )
    return layout.read(directory, layout, source)
