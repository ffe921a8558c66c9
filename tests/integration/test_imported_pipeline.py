"""The whole pipeline on imported rating data (no impressions, so no ranker): import, build,
train the configured retrieval model, evaluate, publish, serve through the ANN index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from feedforge.config import load_settings
from feedforge.datasets.build import build_dataset
from feedforge.evaluation.evaluate import evaluate
from feedforge.events.importers import import_dataset
from feedforge.models.registry import RANKERS
from feedforge.models.train import train_models
from feedforge.publish.publisher import publish
from feedforge.report.build import write_report
from feedforge.serving.app import create_app
from feedforge.store.factory import open_store
from feedforge.workdir import Workdir


def write_ratings(directory: Path, n_users: int = 80, n_items: int = 60) -> Path:
    rng = np.random.default_rng(3)
    directory.mkdir(parents=True)
    lines = []
    day = 86_400
    for user in range(1, n_users + 1):
        liked = [i for i in range(1, n_items + 1) if i % 3 == user % 3]
        for t, item in enumerate(rng.choice(liked, size=15, replace=False)):
            ts = 880_000_000 + int(rng.integers(0, 40)) * day + user * 60 + t
            lines.append(f"{user}\t{item}\t{int(rng.integers(1, 6))}\t{ts}")
    (directory / "u.data").write_text("\n".join(lines) + "\n", encoding="latin-1")
    flags = "|".join(["0"] * 18)
    items = [f"{i}|Film {i} (1996)|01-Jan-1996||http://x|1|{flags}" for i in range(1, n_items + 1)]
    (directory / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return directory


def test_imported_ratings_run_through_every_stage(tmp_path: Path) -> None:
    workdir = Workdir.at(tmp_path / "w")
    import_dataset("ml-100k", write_ratings(tmp_path / "ml"), workdir)
    config = tmp_path / "ml.yaml"
    config.write_text(
        "objective: clicks\n"
        "dataset: {validation_days: 8, test_days: 8, rating_threshold: 1}\n"
        "models: {retrieval: bpr, params: {bpr: {factors: 8, iterations: 20}}}\n"
        "serving: {ann: hnsw}\n"
    )
    settings = load_settings(config)
    build_dataset(workdir, settings)
    saved = train_models(workdir, settings)
    assert set(saved) == {"popularity", "bpr"}  # no impressions: no ranker
    assert not any(workdir.model_dir(name).exists() for name in RANKERS)
    report = evaluate(workdir, settings)
    assert set(report["models"]) == {"popularity", "bpr"}
    assert "ranker" not in report
    with open_store(settings.store, workdir.store_path) as store:
        version = publish(workdir, settings, store)
        meta = store.get_meta(version)
    assert meta is not None and meta["ranker"] is None and meta["retrieval_model"] == "bpr"
    with TestClient(create_app(settings, workdir)) as client:
        body = client.get("/recommend", params={"user_id": "1", "k": 5}).json()
    assert body["version"] == version and body["strategy"] == "personalized"
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert len({item["item_id"] for item in body["items"]}) == 5
    # The report of an imported rating log: every step present, the ranker's absence said.
    result = write_report(workdir, settings)
    html = result.path.read_text(encoding="utf-8")
    assert "models" not in result.empty_sections and "evaluate" not in result.empty_sections
    assert "No data: no bpr ranker trained" not in html  # the ranker is the configured one
    assert f"No data: no {settings.models.ranker.type} ranker trained" in html
    assert "No data: no ranker was evaluated" in html
    assert version in html and report["dataset_version"] in html
