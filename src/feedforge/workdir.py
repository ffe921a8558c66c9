"""The layout of a work directory: where each stage reads and writes its artifacts.

::

    WORKDIR/
      raw/catalog/      items.parquet, users.parquet, manifest.json   (simulate / import)
      raw/events/       date=YYYY-MM-DD/part-*.parquet                (append-only event log)
      dataset/          splits, id maps, ranking examples, test-window (build)
                        snapshot and outcomes, card
      models/<name>/    model files + manifest.json                   (train)
      reports/          evaluation.json (the latest run),             (evaluate)
                        evaluations/<time>_<dataset>.json (every run),
                        report.html                                   (report)
      bundles/<ver>/    serving bundle of one published version       (publish)
      store.sqlite3     the embedded online store                     (publish, serve)
      serving/          last current version per store, held history  (publish, serve)
                        updates
      loop/             continuous-training runs, each with its own   (loop)
                        dataset/, models/ and reports/

A loop run works on a *staged* view (:meth:`Workdir.staged`): the shared raw data, bundles
and store, with the build products (dataset, models, reports) in the run's own directory, so
a run never overwrites the models the serving version was built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workdir:
    """Paths inside one work directory. Creating it touches nothing on disk."""

    root: Path
    products: Path | None = None
    """Where the dataset, models and reports live (default: ``root``)."""

    @classmethod
    def at(cls, root: Path | str) -> Workdir:
        return cls(Path(root).expanduser().resolve())

    def staged(self, products: Path) -> Workdir:
        """This work directory with its dataset, models and reports under ``products``."""
        return Workdir(self.root, Path(products).expanduser().resolve())

    @property
    def _products(self) -> Path:
        return self.products or self.root

    @property
    def loop_dir(self) -> Path:
        """The continuous-training loop's runs and lock (:mod:`feedforge.loop.runs`)."""
        return self.root / "loop"

    @property
    def catalog_dir(self) -> Path:
        return self.root / "raw" / "catalog"

    @property
    def items_path(self) -> Path:
        return self.catalog_dir / "items.parquet"

    @property
    def users_path(self) -> Path:
        return self.catalog_dir / "users.parquet"

    @property
    def events_dir(self) -> Path:
        return self.root / "raw" / "events"

    @property
    def dataset_dir(self) -> Path:
        return self._products / "dataset"

    @property
    def models_dir(self) -> Path:
        return self._products / "models"

    def model_dir(self, name: str) -> Path:
        return self.models_dir / name

    def checkpoint_dir(self, name: str) -> Path:
        """Where the training of model ``name`` checkpoints each epoch
        (:mod:`feedforge.models.distributed`)."""
        return self._products / "checkpoints" / name

    @property
    def reports_dir(self) -> Path:
        return self._products / "reports"

    @property
    def feedlog_dir(self) -> Path:
        """Where the service logs every served feed (:mod:`feedforge.serving.feedlog`)."""
        return self.root / "feedlog"

    @property
    def featurelog_dir(self) -> Path:
        """Where the service logs the exact feature vectors of a sample of requests, for
        training-serving skew checks (:mod:`feedforge.serving.monitor`)."""
        return self.root / "featurelog"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def serving_dir(self) -> Path:
        """The service's durable state: each store's last current version (``current/``,
        :mod:`feedforge.store.last_current`) and live-history updates held while the store
        was down (``held-histories/``, :mod:`feedforge.serving.held`)."""
        return self.root / "serving"

    @property
    def current_dir(self) -> Path:
        """Each store's last current version (:mod:`feedforge.store.last_current`)."""
        return self.serving_dir / "current"

    @property
    def held_dir(self) -> Path:
        """The journals of held live-history updates (:mod:`feedforge.serving.held`)."""
        return self.serving_dir / "held-histories"

    @property
    def store_path(self) -> Path:
        return self.root / "store.sqlite3"

    def command(self, stage: str) -> str:
        """The CLI command that builds ``stage``'s artifact in this work directory."""
        return f"feedforge {stage} --workdir {self.root}"
