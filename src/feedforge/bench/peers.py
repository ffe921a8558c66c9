"""Side-by-side peers: established libraries run on exactly our split.

A peer is trained by the library's own code with the library's own defaults (or with
settings tuned on our validation fold), then scored through the same evaluation code as our
models. The adapters only expose the library's factors through the :class:`Recommender`
interface; they are not published or served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np
from threadpoolctl import threadpool_limits

from feedforge.datasets.interactions import Interactions
from feedforge.errors import NotFittedError
from feedforge.models.base import Recommender


class ImplicitPeer(Recommender):
    """An ``implicit`` model trained on the binary user-item matrix, as implicit's docs do.

    Args:
        algorithm: ``"als"`` (AlternatingLeastSquares) or ``"bpr"``
            (BayesianPersonalizedRanking).
        params: Keyword arguments for the implicit class; empty = the library's defaults.
    """

    name = "implicit"

    def __init__(self, algorithm: str, params: dict[str, Any] | None = None) -> None:
        self.algorithm = algorithm
        self.params = dict(params or {})
        self.user_factors_: np.ndarray | None = None
        self.item_factors_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, **self.params}

    def fit(self, interactions: Interactions) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        matrix = interactions.to_csr()
        matrix.data[:] = 1.0
        cls = AlternatingLeastSquares if self.algorithm == "als" else BayesianPersonalizedRanking
        params = {"random_state": 0, **self.params}
        with threadpool_limits(1, "blas"):  # implicit checks the BLAS threads on creation
            model = cls(**params)
            model.fit(matrix, show_progress=False)
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        users, items = self.user_factors_, self.item_factors_
        if users is None or items is None:
            raise NotFittedError("ImplicitPeer is not fitted; call fit()")
        return users[user_idx] @ items.T

    def save(self, directory: Path) -> None:  # pragma: no cover - peers are never saved
        raise NotImplementedError("benchmark peers are not saved")

    @classmethod
    def load(cls, directory: Path, build_command: str = "") -> Self:  # pragma: no cover
        raise NotImplementedError("benchmark peers are not loaded")
