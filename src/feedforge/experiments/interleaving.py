"""Team-draft interleaving (Radlinski, Kurup & Joachims 2008): two rankers' feeds merged into
one, each slot credited to the team that placed it.

Building a feed of ``k`` slots from rankings ``A`` and ``B``: while slots remain, the team
with fewer picks so far picks next (a fair coin breaks a tie); the picking team places its
highest-ranked item not already in the feed. When one ranking runs out, the other fills the
rest. Clicks and watches on a team's slots credit that team; a unit prefers the team with
more credit over its feeds (:mod:`feedforge.experiments.analysis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interleaved:
    """One interleaved feed.

    Attributes:
        item_ids: The feed, in slot order.
        teams: Per slot, 0 when ranking ``A`` placed the item, 1 when ``B`` did.
        source_ranks: Per slot, the item's position in its team's ranking.
    """

    item_ids: list[str]
    teams: list[int]
    source_ranks: list[int]


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: np.random.Generator) -> Interleaved:
    """Interleave rankings ``a`` and ``b`` into at most ``k`` slots (see the module docs)."""
    rankings = (list(a), list(b))
    cursor = [0, 0]
    picks = [0, 0]
    placed: set[str] = set()
    items: list[str] = []
    teams: list[int] = []
    ranks: list[int] = []

    def next_of(team: int) -> int | None:
        ranking = rankings[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in placed:
            cursor[team] += 1
        return cursor[team] if cursor[team] < len(ranking) else None

    while len(items) < k:
        first = 0 if picks[0] < picks[1] else 1 if picks[1] < picks[0] else int(rng.random() < 0.5)
        team = first
        position = next_of(team)
        if position is None:
            team = 1 - first
            position = next_of(team)
            if position is None:
                break
        item = rankings[team][position]
        placed.add(item)
        items.append(item)
        teams.append(team)
        ranks.append(position)
        picks[team] += 1
    return Interleaved(items, teams, ranks)
