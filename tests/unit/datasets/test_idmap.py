"""Tests of the id map: the one fitted artifact training and serving share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feedforge.datasets.idmap import IdMap
from feedforge.errors import ArtifactError, ValidationError


def test_fit_is_sorted_distinct_and_drops_nulls() -> None:
    ids = IdMap.fit(pl.Series(["u3", "u1", None, "u3", "u2"]))
    assert ids.ids.to_list() == ["u1", "u2", "u3"]
    assert len(ids) == 3


def test_fit_does_not_depend_on_input_order() -> None:
    a = IdMap.fit(pl.Series(["b", "c", "a"]))
    b = IdMap.fit(pl.Series(["c", "a", "b", "a"]))
    assert a.ids.to_list() == b.ids.to_list()


def test_index_keeps_input_order_and_maps_unknown_to_null() -> None:
    ids = IdMap(["x", "y", "z"])
    out = ids.index(pl.Series("item_id", ["z", "nope", "x", None, "y", "z"]))
    assert out.to_list() == [2, None, 0, None, 1, 2]
    assert out.dtype == pl.Int32
    assert out.name == "item_id"


def test_index_of_a_large_shuffled_series() -> None:
    ids = IdMap([f"i{n:05d}" for n in range(5_000)])
    order = np.random.default_rng(0).permutation(5_000)
    out = ids.index(pl.Series([f"i{n:05d}" for n in order]))
    assert np.array_equal(out.to_numpy(), order)


def test_get_and_id_of_are_inverse() -> None:
    ids = IdMap(["a", "b", "c"])
    assert [ids.get(x) for x in ("a", "b", "c", "zz")] == [0, 1, 2, None]
    assert ids.id_of(np.array([2, 0, 1])) == ["c", "a", "b"]


def test_empty_map_knows_nothing() -> None:
    ids = IdMap([])
    assert len(ids) == 0
    assert ids.index(pl.Series(["a"])).to_list() == [None]
    assert ids.get("a") is None


@pytest.mark.parametrize("bad", [["a", "b", "a"], ["a", None]])
def test_rejects_duplicate_or_null_ids(bad: list[str | None]) -> None:
    with pytest.raises(ValidationError):
        IdMap(bad)  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path: Path) -> None:
    ids = IdMap(["u9", "u1", "u5"])  # index order is kept, not re-sorted
    path = tmp_path / "ids" / "users.parquet"
    ids.save(path)
    back = IdMap.load(path)
    assert back.ids.to_list() == ["u9", "u1", "u5"]
    assert back.index(pl.Series(["u5", "u9"])).to_list() == [2, 0]


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "users.parquet"
    with pytest.raises(ArtifactError, match="missing id map") as info:
        IdMap.load(path, "feedforge build --workdir w")
    assert str(path) in str(info.value)
    assert "feedforge build --workdir w" in str(info.value)


@pytest.mark.parametrize(
    "write",
    [
        lambda p: p.write_bytes(b"definitely not parquet"),
        lambda p: p.write_bytes(b""),
        lambda p: pl.DataFrame({"other": ["a"]}).write_parquet(p),
        lambda p: pl.DataFrame({"id": [1, 2]}).write_parquet(p),
        lambda p: pl.DataFrame({"id": ["a", "a"]}).write_parquet(p),
        lambda p: pl.DataFrame({"id": ["a", None]}).write_parquet(p),
    ],
    ids=["garbage", "empty", "no-id-column", "int-ids", "duplicates", "null"],
)
def test_load_corrupt_file(tmp_path: Path, write: Callable[[Path], object]) -> None:
    path = tmp_path / "items.parquet"
    write(path)
    with pytest.raises(ArtifactError, match="corrupt id map") as info:
        IdMap.load(path)
    assert str(path) in str(info.value)
    assert "feedforge build" in str(info.value)


def test_load_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    IdMap([f"i{n}" for n in range(1000)]).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="corrupt id map"):
        IdMap.load(path)
