"""One published version loaded in memory: item ids, embeddings and feature snapshot (from
the store, read once), the ranker and the ANN index (from the version's bundle). A version
published with another feature list than the code's is refused; the ranker is placed on
``serving.ranker_device``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from feedforge.config import ServingConfig
from feedforge.datasets.idmap import IdMap
from feedforge.errors import ArtifactError, ConfigError, ValidationError
from feedforge.features.content import CONTENT_MAP_FILE, ContentMap
from feedforge.features.definitions import FEATURES
from feedforge.features.item_table import ItemTable
from feedforge.index.ann import AnnIndex, load_or_exact
from feedforge.index.extended import ExtendedIndex
from feedforge.models.base import Ranker
from feedforge.models.ranker_utils import feature_difference
from feedforge.models.registry import load_ranker
from feedforge.monitoring.profile import Profile
from feedforge.store.base import OnlineStore
from feedforge.store.bundle import ANN_DIR, ITEM_IDS_FILE, RANKER_DIR, REFERENCE_PROFILE_FILE
from feedforge.store.keys import ITEM_EMB, ITEM_FEAT

_LOAD_CHUNK = 10_000


@dataclass(frozen=True)
class LoadedVersion:
    """One published version, loaded in memory."""

    version: str
    meta: dict[str, Any]
    items: IdMap
    item_matrix: np.ndarray  # (n_items, D) float32
    item_table: ItemTable  # the item feature snapshot, rows aligned with item_matrix
    index: AnnIndex | ExtendedIndex  # candidate retrieval over item_matrix
    ranker: Ranker | None  # None: candidates are ordered by their retrieval score
    popular: list[str]
    snapshot_time: float  # epoch seconds
    published_at: float  # epoch seconds
    reference: Profile | None = None  # the drift baseline (None: published without one)
    content_map: ContentMap | None = None  # attributes -> vector of items posted later
    blocked: frozenset[str] = frozenset()  # withdrawn items (serving.live), never served

    def now(self) -> float:
        """The scoring clock: the snapshot time advanced by the wall time since publishing."""
        return self.snapshot_time + (datetime.now(UTC).timestamp() - self.published_at)


def load_version(
    store: OnlineStore,
    version: str,
    meta: dict[str, Any],
    serving: ServingConfig | None = None,
    bundles_dir: Path | None = None,
) -> LoadedVersion:
    """Load a published version's item embeddings (store), ranker and ANN index (bundle).

    Args:
        store: The online store.
        version: The version to load.
        meta: Its metadata.
        serving: ``ann`` picks the index (``exact`` ignores the bundle's) and
            ``ann_ef_search`` its search beam; default :class:`ServingConfig`'s defaults.
        bundles_dir: The service's ``WORKDIR/bundles``: the bundle is read from
            ``bundles_dir/<version>`` when it is there (a shared volume mounted elsewhere than
            on the publishing host, e.g. in a container), else from the path the publisher
            recorded.
    """
    cfg = serving or ServingConfig()
    bundle = Path(meta["bundle"])
    if bundles_dir is not None and (bundles_dir / version / "manifest.json").is_file():
        bundle = bundles_dir / version
    command = "feedforge publish"
    items = IdMap.load(bundle / ITEM_IDS_FILE, command).build_lookups()
    ids = items.ids.to_list()
    parts = []
    records: list[dict[str, Any] | None] = []
    for start in range(0, len(ids), _LOAD_CHUNK):
        chunk = ids[start : start + _LOAD_CHUNK]
        parts.append(store.get_vectors(version, ITEM_EMB, chunk)[0])
        records += store.get_records(version, ITEM_FEAT, chunk)
    matrix = np.vstack(parts) if parts else np.zeros((0, int(meta["dim"])), dtype=np.float32)
    item_table = ItemTable.from_records(records)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if cfg.ann == "exact":
        index = AnnIndex.exact(matrix)
    else:
        ann_dir = bundle / str((meta.get("ann") or {}).get("dir", ANN_DIR))
        index = load_or_exact(ann_dir, matrix, ef_search=cfg.ann_ef_search)
    ranker = None
    if meta.get("ranker"):
        published = [str(f) for f in meta.get("features", [])]
        if published != list(FEATURES):
            # The service computes today's features; a ranker trained on others would be fed
            # the wrong columns.
            raise ArtifactError(
                bundle,
                f"version {version} was published with another feature list ("
                + feature_difference(published, list(FEATURES))
                + "); train and publish it again with this code",
                "feedforge train && feedforge publish",
            )
        ranker = load_ranker(
            meta["ranker"], bundle / RANKER_DIR, command, expected_features=published
        )
        try:
            ranker.use_device(cfg.ranker_device)
        except ValidationError as exc:
            raise ConfigError(f"serving.ranker_device: {exc}") from exc
    reference_path = bundle / REFERENCE_PROFILE_FILE
    reference = Profile.load(reference_path, command) if reference_path.is_file() else None
    map_path = bundle / CONTENT_MAP_FILE
    content_map = ContentMap.load(map_path, command) if map_path.is_file() else None
    return LoadedVersion(
        version=version,
        meta=meta,
        items=items,
        item_matrix=matrix,
        item_table=item_table,
        index=index,
        ranker=ranker,
        popular=list(meta["popular"]),
        snapshot_time=datetime.fromisoformat(meta["snapshot_time"]).timestamp(),
        published_at=datetime.fromisoformat(meta["published_at"]).timestamp(),
        reference=reference,
        content_map=content_map,
    )
