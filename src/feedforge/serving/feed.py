"""A served feed: what the pipeline answers, the API returns and the feed log records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feedforge.index.ann import RetrievalMethod
from feedforge.serving.explain import Explanation


@dataclass(frozen=True)
class Feed:
    user_id: str
    version: str
    strategy: str
    item_ids: list[str]
    scores: list[float]
    retrieval: RetrievalMethod | None = None  # the search that found the candidates
    propensities: list[float] | None = None  # per item; None means all 1 (deterministic)
    explanations: list[Explanation] | None = None  # per item
    degraded: bool = False  # answered from the in-process fallback (store unavailable)
    experiments: list[dict[str, Any]] | None = None  # exposures: experiment, variant, version
    teams: list[str] | None = None  # interleaved feeds: the variant that placed each slot
