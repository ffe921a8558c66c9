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


def test_also_sampled_writes_both_tables_from_one_training(data_dir: Path, tmp_path: Path) -> None:
    report = run_quality(
        "ml-100k", data_dir, "leave-one-out", tmp_path, also_sampled=20,
        models=["ease", "als", "sasrec"], quick=True,
    )  # fmt: skip
    sampled = report["also_sampled"]
    assert sampled["protocol"] == "leave-one-out (20 negatives)"
    assert "tuned on the full-ranking validation fold" in sampled["warnings"][0]
    on_disk = json.loads((tmp_path / "quality_ml-100k_leave-one-out_20neg.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(sampled["rows"]))
    assert (tmp_path / "quality_ml-100k_leave-one-out.json").is_file()
    full = {r["model"]: r for r in report["rows"]}
    for row in sampled["rows"]:
        # The same fitted model: the same fit time; ranking 21 items is easier than all 40.
        assert row["train_seconds"] == full[row["model"]]["train_seconds"]
        assert row["metrics"]["hr@10"] >= full[row["model"]]["metrics"]["hr@10"]
        assert 0 < row["stderr"]["ndcg@10"] < 0.2
    pairs = {(c["model"], c["against"]) for c in report["comparisons"]}
    assert {("sasrec", "ease"), ("sasrec", "als")} <= pairs
    markdown = (tmp_path / "quality_ml-100k_leave-one-out.md").read_text()
    assert "Paired comparisons" in markdown and "Training with early stopping" in markdown
    # SASRec is trained once (validation fold), as its paper tests; the others are refitted.
    assert full["sasrec"]["refit_on_test_train"] is False and full["ease"]["refit_on_test_train"]
    assert full["sasrec"]["fit_stats"]["epochs_run"] == 1
    assert "Trained once, on the validation fold's training data" in markdown
    with pytest.raises(ConfigError, match="--also-sampled applies to leave-one-out"):
        run_quality("ml-100k", data_dir, "msr-stratified", None, also_sampled=20)
    with pytest.raises(ConfigError, match="--also-sampled applies to leave-one-out"):
        run_quality("ml-100k", data_dir, "leave-one-out", None, negatives=20, also_sampled=20)


def test_paired_comparisons_match_scipy() -> None:
    from scipy import stats

    from feedforge.bench.quality import paired_comparisons

    rng = np.random.default_rng(0)
    a = rng.random(500)
    b = np.clip(a - 0.05 + rng.normal(0, 0.1, 500), 0, 1)
    c = rng.random(500)
    a[3] = np.nan  # a user without a relevant item for one model is left out of the pair
    per_user = {"sasrec": a, "ease": b, "als": c}
    rows = [
        {"model": m, "metrics": {"ndcg@10": float(np.nanmean(v))},
         "stderr": {"ndcg@10": float(stats.sem(v, nan_policy="omit"))}}
        for m, v in per_user.items()
    ]  # fmt: skip
    out = {(c["model"], c["against"]): c for c in paired_comparisons(per_user, "ndcg@10", rows)}
    best = max(rows, key=lambda r: r["metrics"]["ndcg@10"])["model"]
    assert {m for m, _ in out} == {best, "sasrec"}
    keep = ~np.isnan(a)
    t = stats.ttest_rel(a[keep], b[keep])
    entry = out[("sasrec", "ease")]
    assert entry["z"] == pytest.approx(t.statistic)
    assert entry["difference"] == pytest.approx(np.mean(a[keep] - b[keep]))
    assert entry["paired_se"] == pytest.approx(stats.sem(a[keep] - b[keep]))


def test_published_rows_follow_the_dataset_and_the_variant() -> None:
    from feedforge.bench.quality import published_rows

    full = published_rows("user-item-text", "Toys_and_Games", "leave-one-out", None)
    sampled = published_rows("user-item-text", "Toys_and_Games", "leave-one-out", 100)
    assert any(r["model"].startswith("SASRec (P5") for r in full)
    assert all(r["metrics"]["ndcg@10"] < 0.1 for r in full)
    assert all(r["metrics"]["ndcg@10"] > 0.2 for r in sampled)
    assert published_rows("user-item-text", "Toys_and_Games", "temporal", None) == []
    assert published_rows("user-item-text", "Other_Shop", "leave-one-out", None) == []
    assert published_rows("ml-100k", "ml-100k", "msr-stratified", None)[0]["model"] == "BiVAE"
