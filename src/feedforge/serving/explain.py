"""Short, honest explanations of served items.

A personalised item is explained by the item of the user's history (the published consumed
items plus the live history) whose embedding is most similar to it (cosine similarity of the
published item embeddings, the same vectors retrieval uses): "similar to X, from your
history". A user with no usable history gets "matches your taste profile" (the item came
from their embedding alone); a popularity feed says so, and a degraded answer says that too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POPULAR = "popular right now"
DEGRADED = "popular right now (personalisation is temporarily unavailable)"
PROFILE = "matches your taste profile"
MAX_HISTORY = 100
"""The most recent history items an explanation looks at."""


@dataclass(frozen=True)
class Explanation:
    """Why one item is in the feed: ``text`` and, when it points at one, the history item."""

    text: str
    because_item_id: str | None = None


def explain_by_history(
    item_matrix: np.ndarray,
    shown: np.ndarray,
    history: np.ndarray,
    history_ids: list[str],
) -> list[Explanation]:
    """One explanation per shown item, from its most similar history item.

    Args:
        item_matrix: ``(n_items, D)`` published item embeddings.
        shown: ``(S,)`` indices of the shown items.
        history: ``(H,)`` indices of the user's history items (most recent last).
        history_ids: The ``H`` ids of those items.

    Returns:
        ``S`` explanations; :data:`PROFILE` for every item when ``history`` is empty.
    """
    if len(history) == 0:
        return [Explanation(PROFILE) for _ in range(len(shown))]
    history, history_ids = history[-MAX_HISTORY:], history_ids[-MAX_HISTORY:]
    a = item_matrix[shown].astype(np.float64)
    b = item_matrix[history].astype(np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    best = np.argmax(a @ b.T, axis=1)
    return [
        Explanation(f"similar to {history_ids[j]}, from your history", history_ids[j]) for j in best
    ]
