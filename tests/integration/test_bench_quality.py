"""The quality benchmark end to end, on a small ML-100k-format dataset the test writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from feedforge.bench.quality import run_quality
from feedforge.errors import ConfigError


def write_ml100k(directory: Path, n_users: int = 60, n_items: int = 40, seed: int = 0) -> Path:
    """A tiny ML-100k layout: two taste groups, so learned models beat popularity."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    lines = []
    for user in range(1, n_users + 1):
        group = user % 2
        liked = [i for i in range(1, n_items + 1) if i % 2 == group]
        chosen = rng.choice(liked, size=12, replace=False)
        for t, item in enumerate(chosen):
            lines.append(f"{user}\t{item}\t{int(rng.integers(1, 6))}\t{880000000 + user * 100 + t}")
    (directory / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    genres = "|".join(["0"] * 19)
    items = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{genres}" for i in range(1, n_items + 1)]
    (directory / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return directory


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ml100k(tmp_path_factory.mktemp("bench") / "ml-100k")


def test_msr_stratified_table(data_dir: Path, tmp_path: Path) -> None:
    report = run_quality(
        "ml-100k",
        data_dir,
        "msr-stratified",
        tmp_path,
        models=["popularity", "ease", "als", "implicit ALS (defaults)"],
        quick=True,
    )
    saved = json.loads((tmp_path / "quality_ml-100k_msr-stratified.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert saved["command"].startswith("feedforge ")
    table = (tmp_path / "quality_ml-100k_msr-stratified.md").read_text()
    rows = {r["model"]: r for r in saved["rows"]}
    assert {"popularity", "ease", "implicit ALS (defaults)", "BiVAE"} <= set(rows)
    assert rows["BiVAE"]["source"] == "published"
    assert rows["implicit ALS (defaults)"]["source"] == "peer"
    for name in ("popularity", "ease", "implicit ALS (defaults)"):
        metrics = rows[name]["metrics"]
        assert set(metrics) == {"map_total@10", "ndcg@10", "precision@10", "recall_total@10"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert rows[name]["train_seconds"] >= 0
        assert f"| {name} |" in table
    # Two disjoint taste groups: the item model must beat popularity.
    assert rows["ease"]["metrics"]["ndcg@10"] > rows["popularity"]["metrics"]["ndcg@10"]
    # The ANN index is measured for every embedding model of ours (not EASE, not the peers),
    # at the published index's settings and the serving retrieval depth.
    (ann,) = saved["ann"]
    assert ann["model"] == "als" and ann["ef_search"] == 1024
    assert set(ann["recall_vs_exact"]) == {"@10", "@200"}
    assert all(0.0 <= v <= 1.0 for v in ann["recall_vs_exact"].values())
    assert "| als | " in table.split("ANN recall")[1]


def test_leave_one_out_sampled(data_dir: Path, tmp_path: Path) -> None:
    report = run_quality(
        "ml-100k",
        data_dir,
        "leave-one-out",
        tmp_path,
        negatives=20,
        models=["popularity", "ease"],
        quick=True,
    )
    assert (tmp_path / "quality_ml-100k_leave-one-out_20neg.json").is_file()
    assert report["metrics"] == ["hr@10", "ndcg@10"]
    assert not any(r["source"] == "published" for r in report["rows"])


def test_unknown_names_are_refused(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown protocol"):
        run_quality("ml-100k", data_dir, "random", None)
    with pytest.raises(ConfigError, match="unknown benchmark model"):
        run_quality("ml-100k", data_dir, "msr-stratified", None, models=["nope"])


def test_options_the_protocol_ignores_are_refused(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--negatives applies to leave-one-out only"):
        run_quality("ml-100k", data_dir, "msr-stratified", None, negatives=100)


def _pairs_file(directory: Path, n_users: int = 40, n_items: int = 30, seed: int = 1) -> Path:
    """``user item`` lines, round-robin over the users (each reads a run of consecutive
    items), so that a split by line order still leaves every user some history."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    starts = rng.integers(1, n_items - 8, size=n_users)
    lines = [f"{u + 1} {starts[u] + t}" for t in range(8) for u in range(n_users)]
    path = directory / "Tiny_Shop.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_generic_files_name_their_tables_and_time_protocols_warn(tmp_path: Path) -> None:
    path = _pairs_file(tmp_path / "data")
    said: list[str] = []
    report = run_quality(
        "user-item-text",
        path,
        "temporal",
        tmp_path / "out",
        models=["popularity"],
        quick=True,
        progress=said.append,
    )
    assert report["dataset"] == "Tiny_Shop" and report["importer"] == "user-item-text"
    assert (tmp_path / "out" / "quality_Tiny_Shop_temporal.json").is_file()
    assert "no timestamps" in report["warnings"][0]
    assert any(line.startswith("warning: Tiny_Shop has no timestamps") for line in said)
    assert "**Warning:**" in (tmp_path / "out" / "quality_Tiny_Shop_temporal.md").read_text()
    named = run_quality(
        "user-item-text", path, "leave-one-out", tmp_path / "out", models=["popularity"],
        quick=True, name="tiny",
    )  # fmt: skip
    assert named["warnings"] == []
    assert (tmp_path / "out" / "quality_tiny_leave-one-out.json").is_file()
