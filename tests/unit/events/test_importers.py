"""Tests of the dataset importers: every format converts exactly, bad input names file and line.

Every test writes its own few-line files into ``tmp_path`` (MovieLens data may not be
redistributed, so none is copied here).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import feedforge.events.importers.core as core_module
import feedforge.events.importers.movielens as movielens_module
from feedforge.errors import DataError, ValidationError
from feedforge.events.catalog import read_catalog
from feedforge.events.importers import SOURCES, ImportSummary, import_dataset
from feedforge.events.log import EventLog
from feedforge.events.simulator import simulate
from feedforge.events.world import WORLD_FILE
from feedforge.workdir import Workdir

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
EMPTY: list[str] = []


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _write(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        (directory / name).write_bytes(data)
    return directory


def _events(workdir: Workdir) -> pl.DataFrame:
    return (
        EventLog(workdir.events_dir)
        .scan()
        .select("event_id", "timestamp", "user_id", "item_id", "event_type", "value")
        .sort("timestamp", "event_id")
        .collect()
    )


def _expected_events(rows: list[tuple[str, datetime, str, str, str, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "event_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "user_id": pl.String,
            "item_id": pl.String,
            "event_type": pl.String,
            "value": pl.Float64,
        },
        orient="row",
    )


def _items(workdir: Workdir) -> list[dict[str, Any]]:
    items = read_catalog(workdir)[1]
    return items.select("item_id", "title", "categories", "created_at").to_dicts()


def _users(workdir: Workdir) -> list[dict[str, Any]]:
    return read_catalog(workdir)[2].select("user_id", "created_at", "age_bucket").to_dicts()


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


ML100K: dict[str, str | bytes] = {
    "u.data": (
        "1\t10\t4\t880000000\n"
        "2\t10\t5\t880000100\n"
        "1\t20\t3\t880086400\n"
        "1\t10\t4\t880000000\n"  # an exact duplicate of line 1
        "2\t99\t2\t880000200\n"  # item 99 is not in u.item
    ),
    # Latin-1, like GroupLens ships it: "Mis\xe9rables" is not valid UTF-8.
    "u.item": (
        f"10|Toy Story (1995)|01-Jan-1995||http://a|{_flags(3, 4, 5)}\n"
        f"20|Mis\xe9rables, Les (1995)|01-Jan-2000||http://b|{_flags(8, 12)}\n"
        f"30|unknown||||{_flags(0)}\n"
    ).encode("latin-1"),
    "u.user": "1|17|M|student|12345\n2|45|F|other|54321\n3|60|M|retired|00000\n",
}


def test_ml100k_converts_ratings_catalog_and_users(tmp_path: Path) -> None:
    data = _write(tmp_path / "ml-100k", ML100K)
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("ml-100k", data, workdir)

    assert (summary.rows_read, summary.events_written, summary.duplicates) == (5, 4, 1)
    assert (summary.users, summary.items, summary.catalog_users, summary.catalog_items) == (
        2,
        3,
        3,
        4,
    )
    assert summary.event_type == "rating" and not summary.synthetic_timestamps
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                ("ml-100k:1:10:880000000:4.0", _ts(880000000), "1", "10", "rating", 4.0),
                ("ml-100k:2:10:880000100:5.0", _ts(880000100), "2", "10", "rating", 5.0),
                ("ml-100k:2:99:880000200:2.0", _ts(880000200), "2", "99", "rating", 2.0),
                ("ml-100k:1:20:880086400:3.0", _ts(880086400), "1", "20", "rating", 3.0),
            ]
        ),
    )
    assert _items(workdir) == [
        # Released before its first rating: the release date.
        {
            "item_id": "10",
            "title": "Toy Story (1995)",
            "categories": ["Animation", "Children's", "Comedy"],
            "created_at": datetime(1995, 1, 1, tzinfo=UTC),
        },
        # Rated before its release date: the first rating.
        {
            "item_id": "20",
            "title": "Misérables, Les (1995)",
            "categories": ["Drama", "Musical"],
            "created_at": _ts(880086400),
        },
        # No date and no rating: the end of the log; the "unknown" genre is no category.
        {"item_id": "30", "title": "unknown", "categories": EMPTY, "created_at": _ts(880086400)},
        {"item_id": "99", "title": "unknown 99", "categories": EMPTY, "created_at": _ts(880000200)},
    ]
    assert _users(workdir) == [
        {"user_id": "1", "created_at": _ts(880000000), "age_bucket": "under 18"},
        {"user_id": "2", "created_at": _ts(880000100), "age_bucket": "45-49"},
        {"user_id": "3", "created_at": None, "age_bucket": "56+"},
    ]
    manifest = read_catalog(workdir)[0]
    assert manifest.extra["source"] == "ml-100k"
    assert manifest.extra["path"] == str(data.resolve())
    assert manifest.extra["import_counts"] == {
        "rows_read": 5,
        "events_written": 4,
        "duplicates": 1,
        "users": 2,
        "items": 3,
    }


def test_ml100k_reads_genre_names_and_count_from_u_genre(tmp_path: Path) -> None:
    data = _write(
        tmp_path / "ml-100k",
        {
            "u.data": "1\t1\t5\t880000000\n",
            "u.item": "1|A film|01-Jan-1995||http://a|0|1|1\n2|B film|||http://b|1|0|0\n",
            "u.genre": "none|0\nDrama|1\nNoir|2\n\n",
        },
    )
    workdir = Workdir.at(tmp_path / "wd")
    import_dataset("ml-100k", data, workdir)
    assert [i["categories"] for i in _items(workdir)] == [["Drama", "Noir"], ["none"]]
    assert _users(workdir) == [
        {"user_id": "1", "created_at": _ts(880000000), "age_bucket": None}  # no u.user
    ]


ML1M: dict[str, str | bytes] = {
    "ratings.dat": "1::100::5::978300760\n1::200::3::978302109\n2::100::4::978301968\n",
    "movies.dat": (
        "100::Toy Story (1995)::Animation|Children's|Comedy\n"
        "200::Mis\xe9rables, Les (1995)::Drama|Musical\n"
        "300::Nothing (2000)::(no genres listed)\n"
    ).encode("latin-1"),
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
}


def test_ml1m_converts_double_colon_files(tmp_path: Path) -> None:
    data = _write(tmp_path / "ml-1m", ML1M)
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("ml-1m", data, workdir)
    assert (summary.rows_read, summary.events_written, summary.duplicates) == (3, 3, 0)
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                ("ml-1m:1:100:978300760:5.0", _ts(978300760), "1", "100", "rating", 5.0),
                ("ml-1m:2:100:978301968:4.0", _ts(978301968), "2", "100", "rating", 4.0),
                ("ml-1m:1:200:978302109:3.0", _ts(978302109), "1", "200", "rating", 3.0),
            ]
        ),
    )
    assert _items(workdir) == [
        {
            "item_id": "100",
            "title": "Toy Story (1995)",
            "categories": ["Animation", "Children's", "Comedy"],
            "created_at": _ts(978300760),
        },
        {
            "item_id": "200",
            "title": "Misérables, Les (1995)",
            "categories": ["Drama", "Musical"],
            "created_at": _ts(978302109),
        },
        {
            "item_id": "300",
            "title": "Nothing (2000)",
            "categories": EMPTY,
            "created_at": _ts(978302109),
        },
    ]
    assert _users(workdir) == [
        {"user_id": "1", "created_at": _ts(978300760), "age_bucket": "under 18"},
        {"user_id": "2", "created_at": _ts(978301968), "age_bucket": "56+"},
    ]


RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n"
    "1,1,4.0,964982703\n"
    "1,3,4.5,964981247\n"
    "2,1,0.5,1445714835\n"
    "2,1,0.5,1445714835\n"  # exact duplicate
    "2,1,1.0,1445714835\n"  # same user, item and time but another rating: kept
)
MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation\n"
    '3,"American President, The (1995)",Comedy|Drama\n'
    "5,Cité des enfants perdus (1995),(no genres listed)\n"
)


@pytest.mark.parametrize("source", ["ml-20m", "ml-25m", "ml-latest", "ml-latest-small"])
def test_movielens_csv_releases(tmp_path: Path, source: str) -> None:
    data = _write(tmp_path / source, {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV})
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset(source, data, workdir)
    assert (summary.rows_read, summary.events_written, summary.duplicates) == (5, 4, 1)
    assert (summary.users, summary.items) == (2, 2)
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                (f"{source}:1:3:964981247:4.5", _ts(964981247), "1", "3", "rating", 4.5),
                (f"{source}:1:1:964982703:4.0", _ts(964982703), "1", "1", "rating", 4.0),
                (f"{source}:2:1:1445714835:0.5", _ts(1445714835), "2", "1", "rating", 0.5),
                (f"{source}:2:1:1445714835:1.0", _ts(1445714835), "2", "1", "rating", 1.0),
            ]
        ),
    )
    assert _items(workdir) == [
        {
            "item_id": "1",
            "title": "Toy Story (1995)",
            "categories": ["Adventure", "Animation"],
            "created_at": _ts(964982703),
        },
        {
            "item_id": "3",
            "title": "American President, The (1995)",
            "categories": ["Comedy", "Drama"],
            "created_at": _ts(964981247),
        },
        {
            "item_id": "5",
            "title": "Cité des enfants perdus (1995)",
            "categories": EMPTY,
            "created_at": _ts(1445714835),
        },
    ]
    assert [u["age_bucket"] for u in _users(workdir)] == [None, None]


@pytest.mark.parametrize("layout", ["dat", "csv"])
def test_ml10m_reads_whichever_layout_is_there(tmp_path: Path, layout: str) -> None:
    files: dict[str, str | bytes] = (
        {"ratings.dat": "1::100::3.5::978300760\n", "movies.dat": ML1M["movies.dat"]}
        if layout == "dat"
        else {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV}
    )
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("ml-10m", _write(tmp_path / "ml-10m", files), workdir)
    assert summary.events_written == (1 if layout == "dat" else 4)
    first = _events(workdir).row(0, named=True)
    assert first["event_id"] == (
        "ml-10m:1:100:978300760:3.5" if layout == "dat" else "ml-10m:1:3:964981247:4.5"
    )


@pytest.mark.parametrize(
    ("source", "files"),
    [
        ("ml-100k", ML100K),
        ("ml-1m", ML1M),
        ("ml-latest-small", {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV}),
    ],
)
def test_fast_and_validating_rating_readers_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, files: dict[str, str | bytes]
) -> None:
    data = _write(tmp_path / source, files)
    real = movielens_module.fast_numeric
    taken: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> pl.DataFrame | None:
        result = real(*args, **kwargs)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(movielens_module, "fast_numeric", spy)
    fast = movielens_module.read_movielens(source, data).interactions
    assert taken == [True]
    # CRLF line ends and blank lines are fine, but only the validating reader takes them.
    name = next(n for n in files if n.startswith(("u.data", "ratings")))
    text = files[name]
    assert isinstance(text, str)
    _write(data, {name: text.replace("\n", "\r\n") + "\r\n\n"})
    slow = movielens_module.read_movielens(source, data).interactions
    assert taken == [True, False]
    assert_frame_equal(fast, slow)


def test_generic_csv_with_iso_and_unix_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv"
    path.write_text(
        "user_id,item_id,rating,timestamp,comment\n"
        'alice,book-1,5,2024-01-02T03:04:05Z,"nice, really"\n'
        "bob,book-2,3.5,1704164645,\n"
        "alice,book-2,1,2024-01-02 10:00:00+02:00,\n"
        "carol, book-3 ,2,2024-01-02,\n",
        encoding="utf-8",
    )
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("csv", path, workdir)
    assert summary.event_type == "rating"
    midnight = datetime(2024, 1, 2, tzinfo=UTC)
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                ("csv:carol:book-3:1704153600:2.0", midnight, "carol", "book-3", "rating", 2.0),
                (
                    "csv:alice:book-1:1704164645:5.0",
                    _ts(1704164645),
                    "alice",
                    "book-1",
                    "rating",
                    5.0,
                ),
                ("csv:bob:book-2:1704164645:3.5", _ts(1704164645), "bob", "book-2", "rating", 3.5),
                (
                    "csv:alice:book-2:1704182400:1.0",
                    _ts(1704182400),
                    "alice",
                    "book-2",
                    "rating",
                    1.0,
                ),
            ]
        ),
    )
    assert [i["title"] for i in _items(workdir)] == [
        "unknown book-1",
        "unknown book-2",
        "unknown book-3",
    ]


def test_generic_csv_without_rating_or_time_becomes_ordered_clicks(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text("User,Item\nu1,i1\nu2,i1\n\nu1,i2\n", encoding="utf-8")
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("csv", path, workdir)
    assert summary.event_type == "click" and summary.synthetic_timestamps
    at = [EPOCH + timedelta(seconds=s) for s in (2, 3, 5)]  # line numbers, blank line 4 skipped
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                ("csv:u1:i1:1577836802", at[0], "u1", "i1", "click", None),
                ("csv:u2:i1:1577836803", at[1], "u2", "i1", "click", None),
                ("csv:u1:i2:1577836805", at[2], "u1", "i2", "click", None),
            ]
        ),
    )


def test_event_ids_keep_fractional_seconds(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("user,item,timestamp\nu,i,1704164645.25\nu,i,-1.5\n", encoding="utf-8")
    workdir = Workdir.at(tmp_path / "wd")
    import_dataset("csv", path, workdir)
    events = _events(workdir)
    assert events.get_column("event_id").to_list() == [
        "csv:u:i:-1.500000",
        "csv:u:i:1704164645.250000",
    ]
    assert events.get_column("timestamp").to_list() == [
        datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC),
    ]


def test_parquet_directory_is_one_table(tmp_path: Path) -> None:
    directory = tmp_path / "parts"
    directory.mkdir()
    naive = datetime(2024, 5, 1, 12, 0)
    pl.DataFrame(
        {"userId": [1, 2], "movieId": ["a", "b"], "rating": [1.0, 2.5], "timestamp": [naive] * 2}
    ).write_parquet(directory / "part-0.parquet")
    pl.DataFrame(
        {"userId": [2], "movieId": ["a"], "rating": [4.0], "timestamp": [naive]}
    ).write_parquet(directory / "part-1.parquet")
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("parquet", directory, workdir)
    at = naive.replace(tzinfo=UTC)
    assert (summary.rows_read, summary.users, summary.items) == (3, 2, 2)
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                ("parquet:1:a:1714564800:1.0", at, "1", "a", "rating", 1.0),
                ("parquet:2:a:1714564800:4.0", at, "2", "a", "rating", 4.0),
                ("parquet:2:b:1714564800:2.5", at, "2", "b", "rating", 2.5),
            ]
        ),
    )


def test_user_item_text_keeps_line_order(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("1 10\n1\t11\n\n2 10\n", encoding="utf-8")
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("user-item-text", path, workdir)
    assert (summary.event_type, summary.synthetic_timestamps) == ("click", True)
    at = [EPOCH + timedelta(seconds=s) for s in (1, 2, 4)]
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                ("user-item-text:1:10:1577836801", at[0], "1", "10", "click", None),
                ("user-item-text:1:11:1577836802", at[1], "1", "11", "click", None),
                ("user-item-text:2:10:1577836804", at[2], "2", "10", "click", None),
            ]
        ),
    )
    assert _users(workdir) == [
        {"user_id": "1", "created_at": at[0], "age_bucket": None},
        {"user_id": "2", "created_at": at[2], "age_bucket": None},
    ]


def test_user_item_text_one_user_per_line_with_item_attributes(tmp_path: Path) -> None:
    """S3-Rec's layout: ``user item1 item2 ...`` lines and ``<name>_item2attributes.json``."""
    path = tmp_path / "Toys.txt"
    path.write_text("1 10 11 12\n\n2  11\t10\n", encoding="utf-8")
    attributes = {"10": [1, 2], "11": [3], "12": [], "99": ["brand-x"]}
    (tmp_path / "Toys_item2attributes.json").write_text(json.dumps(attributes))
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("user-item-text", path, workdir)
    assert summary.synthetic_timestamps
    at = [EPOCH + timedelta(seconds=s) for s in range(1, 6)]
    assert_frame_equal(
        _events(workdir),
        _expected_events(
            [
                ("user-item-text:1:10:1577836801", at[0], "1", "10", "click", None),
                ("user-item-text:1:11:1577836802", at[1], "1", "11", "click", None),
                ("user-item-text:1:12:1577836803", at[2], "1", "12", "click", None),
                ("user-item-text:2:11:1577836804", at[3], "2", "11", "click", None),
                ("user-item-text:2:10:1577836805", at[4], "2", "10", "click", None),
            ]
        ),
    )
    categories = {row["item_id"]: row["categories"] for row in _items(workdir)}
    # Every item of the attribute file is in the catalog, with or without interactions.
    assert categories == {"10": ["1", "2"], "11": ["3"], "12": [], "99": ["brand-x"]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "holds a JSON list; expected an object of item id -> list of attribute ids"),
        ('{"10": 3}', "item '10': expected a list of attribute ids"),
        ('{"10": [true]}', "item '10': expected a list of attribute ids"),
        ('{"10": [1', "cannot be read as JSON"),
    ],
)
def test_bad_item_attribute_files_name_the_item(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "s.txt"
    path.write_text("1 10 11\n", encoding="utf-8")
    (tmp_path / "s_item2attributes.json").write_text(content)
    with pytest.raises(ValidationError) as info:
        import_dataset("user-item-text", path, Workdir.at(tmp_path / "wd"))
    assert str(tmp_path / "s_item2attributes.json") in info.value.message
    assert expected in info.value.message


def test_overlong_ids_get_a_hashed_event_id(tmp_path: Path) -> None:
    user, item = "u" * 100, "i" * 100
    path = tmp_path / "long.csv"
    path.write_text(f"user,item,timestamp\n{user},{item},5\n{user},{item},5\n", encoding="utf-8")
    workdir = Workdir.at(tmp_path / "wd")
    summary = import_dataset("csv", path, workdir)
    assert (summary.events_written, summary.duplicates) == (1, 1)
    event_id = _events(workdir).item(0, "event_id")
    assert event_id.startswith("csv:sha256:") and len(event_id) == len("csv:sha256:") + 64


def test_chunks_end_at_date_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "CHUNK_ROWS", 2)
    day = 86_400
    lines = [f"1\t{i}\t3\t{880000000 + (i // 3) * day + i}" for i in range(10)]
    data = _write(
        tmp_path / "ml-100k", {"u.data": "\n".join(lines) + "\n", "u.item": ML100K["u.item"]}
    )
    workdir = Workdir.at(tmp_path / "wd")
    messages: list[str] = []
    summary = import_dataset("ml-100k", data, workdir, progress=messages.append)
    log = EventLog(workdir.events_dir)
    assert summary.events_written == log.count() == 10
    partitions = [f.parent.name for f in log.files()]
    assert len(partitions) == len(set(partitions)) == 4  # one file per date
    assert messages[0].startswith("reading ml-100k") and "10/10 events" in messages[-2]


def test_reimport_needs_overwrite(tmp_path: Path) -> None:
    data = _write(tmp_path / "ml-100k", ML100K)
    workdir = Workdir.at(tmp_path / "wd")
    import_dataset("ml-100k", data, workdir)
    with pytest.raises(DataError, match="already holds an event log"):
        import_dataset("ml-100k", data, workdir)
    other = _write(tmp_path / "ml-1m", ML1M)
    summary = import_dataset("ml-1m", other, workdir, overwrite=True)
    assert summary.events_written == 3
    assert set(_events(workdir).get_column("event_id").str.extract("^([^:]+)")) == {"ml-1m"}
    assert read_catalog(workdir)[0].extra["source"] == "ml-1m"


def test_import_over_a_simulated_world_drops_the_world(tmp_path: Path) -> None:
    from feedforge.config import SimulatorConfig

    workdir = Workdir.at(tmp_path / "wd")
    simulate(SimulatorConfig(n_users=20, n_items=15, n_days=1, n_categories=3), workdir)
    assert (workdir.catalog_dir / WORLD_FILE).is_file()
    import_dataset("ml-1m", _write(tmp_path / "ml-1m", ML1M), workdir, overwrite=True)
    assert not (workdir.catalog_dir / WORLD_FILE).exists()
    assert _events(workdir).height == 3


def test_summary_type_and_sources() -> None:
    assert SOURCES == (
        "ml-100k",
        "ml-1m",
        "ml-10m",
        "ml-20m",
        "ml-25m",
        "ml-latest",
        "ml-latest-small",
        "csv",
        "parquet",
        "user-item-text",
    )
    assert "duplicates" in ImportSummary.__dataclass_fields__


# --- bad input ---------------------------------------------------------------------------------

_GOOD_ITEM = f"10|Film|01-Jan-1995||http://a|{_flags(1)}\n"

BAD_DIRECTORIES: list[tuple[str, str, dict[str, str | bytes], str, int, str]] = [
    # (case, source, files, file named, line, expected text)
    (
        "comma-separated u.data",
        "ml-100k",
        {"u.data": "196,242,3,881250949\n", "u.item": _GOOD_ITEM},
        "u.data",
        1,
        "4 tab-separated fields",
    ),
    (
        "non-numeric item id",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n1\tx10\t4\t880000000\n", "u.item": _GOOD_ITEM},
        "u.data",
        2,
        "an integer item id in field 2",
    ),
    (
        "non-numeric rating",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n\n1\t10\tgood\t880000000\n", "u.item": _GOOD_ITEM},
        "u.data",
        3,
        "a numeric rating in field 3",
    ),
    (
        "non-numeric timestamp",
        "ml-100k",
        {"u.data": "1\t10\t4\t2024-01-01\n", "u.item": _GOOD_ITEM},
        "u.data",
        1,
        "a unix timestamp in integer seconds in field 4",
    ),
    (
        "milliseconds timestamp",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n1\t10\t4\t880000000000\n", "u.item": _GOOD_ITEM},
        "u.data",
        2,
        "milliseconds instead of seconds",
    ),
    (
        "empty u.data",
        "ml-100k",
        {"u.data": "", "u.item": _GOOD_ITEM},
        "u.data",
        0,
        "the file is empty",
    ),
    (
        "blank u.data",
        "ml-100k",
        {"u.data": "\n  \n", "u.item": _GOOD_ITEM},
        "u.data",
        0,
        "holds no data",
    ),
    (
        "u.item with a missing genre flag",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n", "u.item": _GOOD_ITEM + "11|B|||http://b|0|1\n"},
        "u.item",
        2,
        "24 '|'-separated fields",
    ),
    (
        "u.item with a bad genre flag",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n", "u.item": _GOOD_ITEM.replace("|1|", "|yes|")},
        "u.item",
        1,
        "genre flags 0 or 1",
    ),
    (
        "u.item with a bad release date",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n", "u.item": _GOOD_ITEM.replace("01-Jan", "1/1")},
        "u.item",
        1,
        "a release date like 01-Jan-1995",
    ),
    (
        "u.item repeats an id",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n", "u.item": _GOOD_ITEM * 2},
        "u.item",
        2,
        "an item id not used on an earlier line",
    ),
    (
        "u.user with a non-numeric age",
        "ml-100k",
        {"u.data": "1\t10\t4\t880000000\n", "u.item": _GOOD_ITEM, "u.user": "1|old|M|x|1\n"},
        "u.user",
        1,
        "an age in whole years",
    ),
    (
        "ratings.dat with three fields",
        "ml-1m",
        {"ratings.dat": "1::100::5::978300760\n1::100::5\n", "movies.dat": ML1M["movies.dat"]},
        "ratings.dat",
        2,
        "4 '::'-separated fields",
    ),
    (
        "users.dat with an unknown age code",
        "ml-1m",
        {**ML1M, "users.dat": "1::F::1::10::48067\n2::M::30::16::70072\n"},
        "users.dat",
        2,
        "an age code (1, 18, 25, 35, 45, 50, 56) in field 3",
    ),
    (
        "ratings.csv without a header",
        "ml-latest-small",
        {"ratings.csv": "1,1,4.0,964982703\n", "movies.csv": MOVIES_CSV},
        "ratings.csv",
        1,
        "a comma-separated header with the columns userId,movieId,rating,timestamp",
    ),
    (
        "ratings.csv missing a column",
        "ml-25m",
        {"ratings.csv": "userId,movieId,rating\n1,1,4.0\n", "movies.csv": MOVIES_CSV},
        "ratings.csv",
        1,
        "(missing timestamp)",
    ),
    (
        "ratings.csv with a short row",
        "ml-25m",
        {"ratings.csv": RATINGS_CSV + "3,1,4.0\n", "movies.csv": MOVIES_CSV},
        "ratings.csv",
        7,
        "a unix timestamp in integer seconds in column 4",
    ),
    (
        "ratings.csv with a long row",
        "ml-25m",
        {"ratings.csv": RATINGS_CSV + "3,1,4.0,964982703,9\n", "movies.csv": MOVIES_CSV},
        "ratings.csv",
        7,
        "at most 4 ','-separated fields",
    ),
    (
        "ratings.csv that is not UTF-8",
        "ml-latest-small",
        {"ratings.csv": RATINGS_CSV.encode() + b"3,\xe9,4.0,964982703\n", "movies.csv": MOVIES_CSV},
        "ratings.csv",
        7,
        "UTF-8 text (byte 0xe9",
    ),
    (
        "movies.csv that is not UTF-8",
        "ml-20m",
        {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV.encode("latin-1")},
        "movies.csv",
        4,
        "UTF-8 text",
    ),
    (
        "movies.csv with an unterminated quote",
        "ml-20m",
        {"ratings.csv": RATINGS_CSV, "movies.csv": MOVIES_CSV + '7,"Open, quote,Drama\n'},
        "movies.csv",
        5,
        "a closing double quote",
    ),
    (
        "header-only ratings.csv",
        "ml-latest",
        {"ratings.csv": "userId,movieId,rating,timestamp\n", "movies.csv": MOVIES_CSV},
        "ratings.csv",
        0,
        "holds no data",
    ),
]


@pytest.mark.parametrize(
    ("source", "files", "name", "line", "expected"),
    [case[1:] for case in BAD_DIRECTORIES],
    ids=[case[0] for case in BAD_DIRECTORIES],
)
def test_bad_dataset_files_name_file_line_and_expectation(
    tmp_path: Path, source: str, files: dict[str, str | bytes], name: str, line: int, expected: str
) -> None:
    data = _write(tmp_path / source, files)
    workdir = Workdir.at(tmp_path / "wd")
    with pytest.raises(ValidationError) as info:
        import_dataset(source, data, workdir)
    message = info.value.message
    assert str(data / name) in message
    assert expected in message
    if line:
        assert f", line {line}: expected" in message
        assert info.value.details["line"] == line
    assert not (workdir.root / "raw").exists()  # nothing written on bad input


BAD_FILES: list[tuple[str, str, str, bytes, str, str]] = [
    # (case, source, file name, content, "line N"/"row N" or "", expected text)
    (
        "csv without an item column",
        "csv",
        "a.csv",
        b"user,rating\n1,2\n",
        "line 1",
        "an item column",
    ),
    (
        "csv with a semicolon separator",
        "csv",
        "a.csv",
        b"user;item\n1;2\n",
        "line 1",
        "a comma-separated header",
    ),
    (
        "csv with a bad timestamp",
        "csv",
        "a.csv",
        b"user,item,timestamp\n1,2,1700000000\n1,2,yesterday\n",
        "line 3",
        "a unix timestamp in seconds or an ISO 8601 time in column 'timestamp'",
    ),
    (
        "csv with a non-numeric rating",
        "csv",
        "a.csv",
        b"user,item,rating\n1,2,five\n",
        "line 2",
        "a numeric rating in column 'rating'",
    ),
    ("csv with an empty user", "csv", "a.csv", b"user,item\n,2\n", "line 2", "a user id"),
    ("csv not in UTF-8", "csv", "a.csv", b"user,item\nJos\xe9,2\n", "line 2", "UTF-8 text"),
    ("empty csv", "csv", "a.csv", b"", "", "the file is empty"),
    (
        "pairs text with a line of one field",
        "user-item-text",
        "s.txt",
        b"1 2\n1\n",
        "line 2",
        "two whitespace-separated fields: user item",
    ),
    (
        "one-user-per-line text with a user without items",
        "user-item-text",
        "s.txt",
        b"1 2 3\n4\n",
        "line 2",
        "a user id followed by their items: user item1 item2 ...",
    ),
    ("text not in UTF-8", "user-item-text", "s.txt", b"1 2\n\xff 3\n", "line 2", "UTF-8 text"),
    ("empty text", "user-item-text", "s.txt", b"\n\n", "", "holds no data"),
    ("not parquet", "parquet", "p.parquet", b"user,item\n1,2\n", "", "cannot be read"),
]


@pytest.mark.parametrize(
    ("source", "name", "content", "where", "expected"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_generic_files_name_file_line_and_expectation(
    tmp_path: Path, source: str, name: str, content: bytes, where: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValidationError) as info:
        import_dataset(source, path, Workdir.at(tmp_path / "wd"))
    assert str(path) in info.value.message
    assert expected in info.value.message
    if where:
        assert f"{path}, {where}: expected" in info.value.message


def test_bad_parquet_values_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame(
        {"user": ["a", "b", "c"], "item": [1, 2, 3], "rating": ["1", "2", "x"]}
    ).write_parquet(path)
    with pytest.raises(ValidationError, match=r"p\.parquet, row 3: expected a numeric rating"):
        import_dataset("parquet", path, Workdir.at(tmp_path / "wd"))
    pl.DataFrame({"user": [1.5], "item": [1]}).write_parquet(path)
    with pytest.raises(ValidationError, match="has type Float64; expected string or integer ids"):
        import_dataset("parquet", path, Workdir.at(tmp_path / "wd"))


@pytest.mark.parametrize(
    ("source", "files", "missing"),
    [
        ("ml-100k", {"u.data": "1\t10\t4\t880000000\n"}, "u.item"),
        ("ml-100k", {"u.item": _GOOD_ITEM}, "u.data"),
        ("ml-1m", {"ratings.dat": ML1M["ratings.dat"]}, "movies.dat"),
        ("ml-10m", {"movies.dat": ML1M["movies.dat"]}, "ratings.dat or ratings.csv"),
        ("ml-latest-small", {"movies.csv": MOVIES_CSV}, "ratings.csv"),
    ],
)
def test_missing_dataset_file_names_file_and_layout(
    tmp_path: Path, source: str, files: dict[str, str | bytes], missing: str
) -> None:
    data = _write(tmp_path / source, files)
    with pytest.raises(ValidationError) as info:
        import_dataset(source, data, Workdir.at(tmp_path / "wd"))
    assert f"missing {missing} in {data}" in info.value.message
    assert f"expected the {source} layout" in info.value.message


def test_wrong_paths_and_sources(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path / "wd")
    not_dir = tmp_path / "u.data"
    not_dir.write_text("1\t1\t1\t1\n")
    with pytest.raises(ValidationError, match="is not a directory; expected the ml-100k"):
        import_dataset("ml-100k", not_dir, workdir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError, match=r"holds no \.csv file"):
        import_dataset("csv", empty, workdir)
    with pytest.raises(ValidationError, match="does not exist"):
        import_dataset("parquet", tmp_path / "nope.parquet", workdir)
    with pytest.raises(ValidationError, match="unknown dataset source 'ml-99k'"):
        import_dataset("ml-99k", tmp_path, workdir)
