"""Tests of versioned artifacts: manifests, atomic JSON writes and their errors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from feedforge import __version__
from feedforge.artifacts import (
    MANIFEST,
    Manifest,
    new_version,
    read_manifest,
    require_file,
    write_json_atomic,
    write_manifest,
)
from feedforge.errors import ArtifactError

BUILD = "feedforge build --workdir /somewhere"


def test_manifest_round_trip(tmp_path: Path) -> None:
    written = write_manifest(
        tmp_path,
        Manifest(
            artifact="dataset",
            schema_version=2,
            inputs={"catalog": "v1"},
            counts={"rows": 10},
            extra={"split": {"t1": "2026-01-01T00:00:00+00:00"}, "n": 3},
        ),
    )
    read = read_manifest(tmp_path, "dataset", (1, 2), BUILD)
    assert read == written
    assert asdict(read)["extra"]["split"]["t1"] == "2026-01-01T00:00:00+00:00"
    assert read.code_version == __version__
    assert read.version and read.created_at


def test_new_versions_are_unique_and_sortable() -> None:
    versions = [new_version() for _ in range(50)]
    assert len(set(versions)) == 50
    stamps = [v.split("-")[0] for v in versions]
    assert stamps == sorted(stamps)


def test_write_json_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "card.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    write_json_atomic(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["card.json"]


def _assert_names(exc: ArtifactError, path: Path) -> None:
    assert str(path) in str(exc)
    assert BUILD in str(exc)
    assert exc.path == path
    assert exc.build_command == BUILD
    # An API client is told the problem and the command, never the server's path.
    assert str(path) not in json.dumps(exc.to_dict()) and BUILD in exc.to_dict()["message"]


def test_missing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dataset"
    with pytest.raises(ArtifactError, match="missing dataset artifact directory") as info:
        read_manifest(directory, "dataset", (1,), BUILD)
    _assert_names(info.value, directory)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing dataset manifest") as info:
        read_manifest(tmp_path, "dataset", (1,), BUILD)
    _assert_names(info.value, tmp_path / MANIFEST)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2, 3]",
        '"a string"',
        '{"artifact": "dataset"}',
        '{"artifact": "dataset", "schema_version": 1, "surprise": true}',
    ],
)
def test_corrupt_manifest(tmp_path: Path, content: str) -> None:
    (tmp_path / MANIFEST).write_text(content, encoding="utf-8")
    with pytest.raises(ArtifactError, match="corrupt dataset manifest") as info:
        read_manifest(tmp_path, "dataset", (1,), BUILD)
    _assert_names(info.value, tmp_path / MANIFEST)


def test_non_utf8_manifest_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(ArtifactError, match="corrupt"):
        read_manifest(tmp_path, "dataset", (1,), BUILD)


def test_wrong_artifact(tmp_path: Path) -> None:
    write_manifest(tmp_path, Manifest(artifact="model/als", schema_version=1))
    with pytest.raises(ArtifactError, match="expected a dataset artifact") as info:
        read_manifest(tmp_path, "dataset", (1,), BUILD)
    assert "model/als" in str(info.value)
    _assert_names(info.value, tmp_path / MANIFEST)


def test_unknown_schema_version(tmp_path: Path) -> None:
    write_manifest(tmp_path, Manifest(artifact="dataset", schema_version=99))
    with pytest.raises(ArtifactError, match="schema version 99 is not supported") as info:
        read_manifest(tmp_path, "dataset", (1, 2), BUILD)
    _assert_names(info.value, tmp_path / MANIFEST)


def test_require_file(tmp_path: Path) -> None:
    present = tmp_path / "a.parquet"
    present.write_bytes(b"x")
    assert require_file(present, "thing", BUILD) == present
    with pytest.raises(ArtifactError, match="missing thing") as info:
        require_file(tmp_path / "b.parquet", "thing", BUILD)
    _assert_names(info.value, tmp_path / "b.parquet")
    with pytest.raises(ArtifactError):
        require_file(tmp_path, "thing", BUILD)  # a directory is not a file


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, {"v": 1})
    circular: dict[str, object] = {}
    circular["self"] = circular  # json.dump raises ValueError midway through the write
    with pytest.raises(ValueError):
        write_json_atomic(target, circular)
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
