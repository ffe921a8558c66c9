"""The serving bundle's layout: the on-disk half of a published version.

``feedforge publish`` writes ``WORKDIR/bundles/<version>/`` (the manifest, the item id order,
the ranker, the ANN index in :data:`ANN_DIR`); a service reads it back when it loads that
version, and falls back to the newest bundle's popular list when the store is down. Both read
the names from here, so publish and serving never import each other.
"""

from __future__ import annotations

BUNDLE_ARTIFACT = "serving-bundle"
BUNDLE_SCHEMA_VERSION = 1
ANN_DIR = "ann"
"""The ANN index (:mod:`feedforge.index.ann`)."""
RANKER_DIR = "ranker"
"""The ranker, saved by its model class."""
ITEM_IDS_FILE = "item_ids.parquet"
"""The served item ids, in the order of the index's rows."""
REFERENCE_PROFILE_FILE = "reference_profile.json"
"""The version's reference profile: its ranker's training rows, binned
(:mod:`feedforge.monitoring.profile`), the baseline of drift."""
