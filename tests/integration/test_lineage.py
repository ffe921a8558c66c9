"""Lineage: each trained model records the dataset it learned from, and a published bundle
records the dataset and the model versions it was built from."""

from __future__ import annotations

import json

from feedforge.artifacts import MANIFEST, read_manifest
from feedforge.config import Settings
from feedforge.datasets.load import load_dataset
from feedforge.workdir import Workdir


def test_models_and_bundles_name_their_inputs(
    published_workdir: Workdir, small_settings: Settings
) -> None:
    dataset = load_dataset(published_workdir).version
    models = small_settings.models
    names = ["popularity", models.retrieval, models.ranker.type]
    versions = {}
    for name in names:
        manifest = read_manifest(published_workdir.model_dir(name), f"model/{name}", (1,), "")
        assert manifest.inputs == {"dataset": dataset}, name
        versions[f"model/{name}"] = manifest.version
    (bundle,) = [b for b in published_workdir.bundles_dir.iterdir() if (b / MANIFEST).is_file()]
    bundle_manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    assert bundle_manifest["inputs"] == {"dataset": dataset, **versions}
