"""``feedforge train --nproc 2``: the torch models trained with PyTorch DDP (gloo, two CPU
processes under torchrun's launcher) match the single-process models on the same data.

Tolerances (the two trainings draw different negatives and in-batch softmax sees half the
batch per rank, so they are close, not equal):

* each retrieval model's NDCG@10 and the two-stage pipeline's NDCG@10 on the test split lie
  within the half-width of the single-process model's 95% bootstrap interval of the same
  metric (``evaluation.json``'s ``intervals``) of each other;
* the DCN ranker's AUC within 0.02 and its log loss within 2% of the single-process one's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from feedforge.config import Settings, load_settings
from feedforge.datasets.build import build_dataset
from feedforge.evaluation.evaluate import evaluate
from feedforge.events.simulator import simulate
from feedforge.models.train import train_models
from feedforge.workdir import Workdir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = {
    "simulator": {"seed": 7, "n_users": 2000, "n_items": 300, "n_days": 12},
    "dataset": {"validation_days": 2, "test_days": 2},
}
MODELS = {
    "sasrec": {"epochs": 4, "batch_size": 64},
    "two_tower": {"epochs": 4, "batch_size": 256},
    "dcn": {"max_epochs": 6},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    settings = Settings.model_validate(WORLD)
    workdir = Workdir.at(tmp_path_factory.mktemp("ddp") / "built")
    simulate(settings.simulator, workdir)
    build_dataset(workdir, settings)
    return workdir


def _config(path: Path, retrieval: str) -> Path:
    path.write_text(
        json.dumps(
            {
                **WORLD,
                "models": {"retrieval": retrieval, "ranker": {"type": "dcn"}, "params": MODELS},
            }
        )
    )
    return path


def _copy(source: Workdir, target: Path) -> Workdir:
    shutil.copytree(source.root, target)
    return Workdir.at(target)


@pytest.mark.parametrize("retrieval", ["two_tower", "sasrec"])
def test_two_ddp_processes_match_one(built: Workdir, tmp_path: Path, retrieval: str) -> None:
    config = _config(tmp_path / "config.json", retrieval)
    settings = load_settings(config)
    single, ddp = _copy(built, tmp_path / "single"), _copy(built, tmp_path / "ddp")
    train_models(single, settings)
    done = subprocess.run(
        [
            sys.executable, "-c", "from feedforge.cli import main; main()", "train",
            "--workdir", str(ddp.root), "--config", str(config), "--nproc", "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train [2 processes]" in done.stdout
    reports: list[dict[str, Any]] = [evaluate(w, settings) for w in (single, ddp)]
    one, two = reports
    pipeline = f"{retrieval}+dcn"
    for model in (retrieval, pipeline):
        low, high = one["intervals"][model]["ndcg@10"]
        tolerance = (high - low) / 2
        a, b = one["models"][model]["ndcg@10"], two["models"][model]["ndcg@10"]
        assert abs(a - b) <= tolerance, f"{model}: NDCG@10 {a:.4f} vs {b:.4f} (+-{tolerance:.4f})"
        assert b > one["models"]["popularity"]["ndcg@10"]  # the DDP model learned something
    assert abs(one["ranker"]["auc"] - two["ranker"]["auc"]) <= 0.02
    assert (
        abs(one["ranker"]["log_loss"] - two["ranker"]["log_loss"])
        <= 0.02 * one["ranker"]["log_loss"]
    )
    # Rank 0 saved each model once, with its training curve; no checkpoint is left.
    for name in (retrieval, "dcn"):
        manifest = json.loads((ddp.model_dir(name) / "manifest.json").read_text())
        assert manifest["extra"]["training_curve"]["series"]
    assert not (ddp.root / "checkpoints").exists() or not any((ddp.root / "checkpoints").iterdir())
