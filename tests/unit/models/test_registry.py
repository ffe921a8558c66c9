"""The lazy registry: a process imports only the models its configuration names.

Checked in a fresh interpreter, since this test session has long imported every model.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from feedforge.errors import ConfigError
from feedforge.models.base import Ranker, Recommender
from feedforge.models.registry import RANKERS, RECOMMENDERS, model_class, params_class

_NO_TORCH_SERVICE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from feedforge.config import load_settings
    from feedforge.datasets.interactions import Interactions
    from feedforge.models.registry import (
        create_ranker, create_recommender, load_ranker, load_recommender,
    )

    work = Path(sys.argv[1])
    config = work / "feedforge.yaml"
    config.write_text(
        "models:\\n"
        "  retrieval: als\\n"
        "  ranker: {type: logistic}\\n"
        "  params: {als: {factors: 4, iterations: 3}, logistic: {C: 0.5},\\n"
        "           sasrec: {epochs: 2}, two_tower: {epochs: 2}, dcn: {hidden_units: 8}}\\n"
    )
    settings = load_settings(config)
    models = settings.models
    rng = np.random.default_rng(0)
    n = 60
    train = Interactions(
        rng.integers(0, 10, n).astype(np.int32), rng.integers(0, 8, n).astype(np.int32),
        np.ones(n, np.float32), np.arange(n, dtype=np.int64), 10, 8,
    )
    for name in ("popularity", models.retrieval):
        model = create_recommender(name, models).fit(train)
        model.save(work / name, inputs={"dataset": "d"})
        load_recommender(name, work / name)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] > 0).astype(int)
    ranker = create_ranker(models.ranker.type, models).fit(X, y, ["a", "b"])
    ranker.save(work / "ranker", inputs={"dataset": "d"})
    load_ranker(models.ranker.type, work / "ranker", expected_features=["a", "b"])

    import feedforge.serving.app
    import feedforge.serving.pipeline

    loaded = sorted(m for m in sys.modules if m.startswith("feedforge.models."))
    print("models:", " ".join(loaded))
    print("torch imported:", "torch" in sys.modules)
    """
)


def test_a_service_without_torch_models_never_imports_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SERVICE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout, result.stdout
    loaded = result.stdout.split("models:")[1].split("\n")[0].split()
    for unused in ("two_tower", "sasrec", "dcn", "torch_utils", "gbdt", "tree", "ease", "bpr"):
        assert f"feedforge.models.{unused}" not in loaded, loaded


@pytest.mark.parametrize("name", ["two_tower", "sasrec", "dcn"])
def test_a_torch_models_declaration_is_the_one_its_class_validates_with(name: str) -> None:
    # Kept apart from the model so checking a config imports no torch; never a second copy.
    assert model_class(name).Params is params_class(name)


def test_iterating_the_registry_imports_no_model() -> None:
    code = (
        "import sys\n"
        "from feedforge.models.registry import RANKERS, RECOMMENDERS\n"
        "names = sorted(RECOMMENDERS) + sorted(RANKERS)\n"
        "assert 'als' in RECOMMENDERS and len(RANKERS) == 4, names\n"
        "print(sorted(m for m in sys.modules if m.startswith('feedforge.models.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(
        sorted(
            [
                "feedforge.models.base",
                "feedforge.models.params",
                "feedforge.models.ranker_utils",
                "feedforge.models.registry",
            ]
        )
    )


def test_every_entry_is_the_class_it_names() -> None:
    for name in RECOMMENDERS:
        assert issubclass(RECOMMENDERS[name], Recommender) and RECOMMENDERS[name].name == name
        assert model_class(name) is RECOMMENDERS[name]
        assert params_class(name) is RECOMMENDERS[name].Params
    for name in RANKERS:
        assert issubclass(RANKERS[name], Ranker) and RANKERS[name].name == name
        assert params_class(name) is RANKERS[name].Params
    assert not set(RECOMMENDERS) & set(RANKERS), "model names are unique across both"
    with pytest.raises(KeyError):
        RECOMMENDERS["nope"]
    with pytest.raises(ConfigError, match="unknown model 'nope'; known: als, bpr, dcn"):
        params_class("nope")
