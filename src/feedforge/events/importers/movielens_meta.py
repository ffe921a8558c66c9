"""Readers of the MovieLens metadata files: items (``u.item``, ``movies.dat``, ``movies.csv``),
genres (``u.genre``) and users (``u.user``, ``users.dat``).

Genre markers that mean "no genre" (``unknown`` in ML-100K, ``(no genres listed)`` later)
become an empty category list. Ages become the ML-1M age groups (:data:`AGE_GROUPS`); gender,
occupation and zip code have no place in feedforge's user table and are not imported.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from feedforge.errors import ValidationError
from feedforge.events.importers.fields import first_duplicate_rule, int_id, present_rule
from feedforge.events.importers.parsed import ITEMS, USERS, typed
from feedforge.events.importers.text import (
    Rule,
    TextFile,
    csv_with_columns,
    field_count_rule,
    split_lines,
    validated,
)

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""ML-100K's genres in flag order, used when ``u.genre`` is absent."""


NO_GENRE = ("unknown", "(no genres listed)")


AGE_GROUPS: dict[int, str] = {
    1: "under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
"""ML-1M's age codes and their groups; ML-100K's exact ages are put in the same groups."""


def _genre_list(column: str, separator: str) -> pl.Expr:
    element = pl.element()
    return (
        pl.col(column)
        .str.strip_chars()
        .str.split(separator)
        .list.eval(element.filter(~element.is_in(NO_GENRE) & (element.str.len_bytes() > 0)))
        .fill_null(pl.lit([], dtype=pl.List(pl.String())))
    )


def genres_100k(directory: Path) -> tuple[str, ...]:
    path = directory / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    text = TextFile.latin1(path)
    index = pl.col("index").str.strip_chars().cast(pl.Int64, strict=False)
    frame = validated(
        text,
        split_lines(text, "|", ("name", "index")),
        {"name": pl.col("name").str.strip_chars(), "index": index},
        [
            field_count_rule(2, "'|'-separated fields (genre name, flag index)"),
            Rule(index.is_null() | (index < 0), "a non-negative integer flag index in field 2"),
            Rule(~index.is_first_distinct(), "a flag index not used by an earlier genre"),
        ],
        expected="lines of 'genre name|flag index'",
    ).sort("index")
    if frame.get_column("index").to_list() != list(range(frame.height)):
        raise ValidationError(
            f"{path}: flag indices must be 0..{frame.height - 1} without gaps",
            path=str(path),
        )
    return tuple(frame.get_column("name").to_list())


def items_100k(path: Path, genres: tuple[str, ...]) -> pl.DataFrame:
    text = TextFile.latin1(path)
    flags = [f"g{i}" for i in range(len(genres))]
    names = ("item", "title", "release", "video", "url", *flags)
    item = int_id("item")
    release_text = pl.col("release").str.strip_chars()
    release = release_text.str.to_datetime(
        "%d-%b-%Y", strict=False, time_unit="us", time_zone="UTC"
    )
    categories = pl.concat_list(
        pl.when(pl.col(flag).str.strip_chars() == "1").then(pl.lit(name))
        for flag, name in zip(flags, genres, strict=True)
        if name not in NO_GENRE
    ).list.drop_nulls()
    frame = validated(
        text,
        split_lines(text, "|", names),
        {"item_id": item, "title": pl.col("title"), "categories": categories, "released": release},
        [
            field_count_rule(
                len(names),
                f"'|'-separated fields (id, title, release date, video release date, url and "
                f"{len(genres)} genre flags)",
            ),
            present_rule(item, "an integer item id in field 1"),
            first_duplicate_rule(item, "an item id not used on an earlier line"),
            Rule(
                release.is_null() & (release_text.str.len_bytes() > 0),
                "a release date like 01-Jan-1995 (or nothing) in field 3",
            ),
            Rule(
                pl.any_horizontal(~pl.col(f).str.strip_chars().is_in(["0", "1"]) for f in flags),
                f"genre flags 0 or 1 in fields 6 to {len(names)}",
            ),
        ],
        expected=f"lines of {len(names)} '|'-separated item fields",
    )
    return typed(frame, ITEMS)


def _age_group(age: pl.Expr) -> pl.Expr:
    # The group of an age is the last group whose lower bound (its ML-1M code) it reaches.
    lows = list(AGE_GROUPS)
    index = pl.sum_horizontal((age >= low).cast(pl.Int8) for low in lows[1:])
    return index.replace_strict(dict(enumerate(AGE_GROUPS.values())), return_dtype=pl.String)


def users_100k(path: Path) -> pl.DataFrame:
    text = TextFile.latin1(path)
    user = int_id("user")
    age = pl.col("age").str.strip_chars().cast(pl.Int64, strict=False)
    frame = validated(
        text,
        split_lines(text, "|", ("user", "age", "gender", "occupation", "zip")),
        {"user_id": user, "age_bucket": _age_group(age)},
        [
            field_count_rule(5, "'|'-separated fields (id, age, gender, occupation, zip code)"),
            present_rule(user, "an integer user id in field 1"),
            first_duplicate_rule(user, "a user id not used on an earlier line"),
            Rule(age.is_null() | (age < 0), "an age in whole years in field 2"),
        ],
        expected="lines of 'id|age|gender|occupation|zip'",
    )
    return typed(frame, USERS)


def movies_dat(path: Path) -> pl.DataFrame:
    text = TextFile.latin1(path)
    item = int_id("item")
    frame = validated(
        text,
        split_lines(text, "::", ("item", "title", "genres")),
        {"item_id": item, "title": pl.col("title"), "categories": _genre_list("genres", "|")},
        [
            field_count_rule(3, "'::'-separated fields (movie id, title, genres)"),
            present_rule(item, "an integer movie id in field 1"),
            first_duplicate_rule(item, "a movie id not used on an earlier line"),
        ],
        expected="lines of 'movie id::title::Genre|Genre'",
    )
    return typed(frame.with_columns(pl.lit(None).alias("released")), ITEMS)


def users_dat(path: Path) -> pl.DataFrame:
    text = TextFile.latin1(path)
    user = int_id("user")
    code = pl.col("age").str.strip_chars().cast(pl.Int64, strict=False)
    group = code.replace_strict(AGE_GROUPS, default=None, return_dtype=pl.String())
    frame = validated(
        text,
        split_lines(text, "::", ("user", "gender", "age", "occupation", "zip")),
        {"user_id": user, "age_bucket": group},
        [
            field_count_rule(5, "'::'-separated fields (id, gender, age, occupation, zip code)"),
            present_rule(user, "an integer user id in field 1"),
            first_duplicate_rule(user, "a user id not used on an earlier line"),
            Rule(
                group.is_null(),
                "an age code (" + ", ".join(map(str, AGE_GROUPS)) + ") in field 3",
            ),
        ],
        expected="lines of 'id::gender::age::occupation::zip'",
    )
    return typed(frame, USERS)


def movies_csv(path: Path) -> pl.DataFrame:
    text = TextFile.utf8(path)
    names = ("movieId", "title", "genres")
    item = int_id("movieId")
    rows, diagnose = csv_with_columns(text, names)
    frame = validated(
        text,
        rows,
        {"item_id": item, "title": pl.col("title"), "categories": _genre_list("genres", "|")},
        [
            present_rule(item, "an integer movieId in column 1"),
            first_duplicate_rule(item, "a movieId not used on an earlier line"),
        ],
        diagnose,
        expected="rows of movieId,title,genres",
    )
    return typed(frame.with_columns(pl.lit(None).alias("released")), ITEMS)
