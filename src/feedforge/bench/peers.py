"""Side-by-side peers: established libraries run on exactly our split.

A peer is trained by the library's own code with the library's own defaults (or with
settings tuned on our validation fold), then scored through the same evaluation code as our
models. The adapters only expose the library's factors through the :class:`Recommender`
interface; they are not published or served.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
from pydantic import Field
from threadpoolctl import threadpool_limits

from feedforge.datasets.interactions import Interactions
from feedforge.errors import NotFittedError
from feedforge.models.base import Recommender
from feedforge.models.params import ModelParams


class ImplicitPeerParams(ModelParams):
    """Hyper-parameters of :class:`ImplicitPeer`: the algorithm and the library's own."""

    algorithm: Literal["als", "bpr"]
    library: dict[str, Any] = Field(default_factory=dict)


class ImplicitPeer(Recommender):
    """An ``implicit`` model trained on the binary user-item matrix, as implicit's docs do.

    Args:
        algorithm: ``"als"`` (AlternatingLeastSquares) or ``"bpr"``
            (BayesianPersonalizedRanking).
        params: Keyword arguments for the implicit class; empty = the library's defaults.
    """

    name = "implicit"
    Params = ImplicitPeerParams
    params: ImplicitPeerParams

    def __init__(self, algorithm: str, params: dict[str, Any] | None = None) -> None:
        super().__init__(algorithm=algorithm, library=dict(params or {}))
        self.user_factors_: np.ndarray | None = None
        self.item_factors_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        """The algorithm and the library's keyword arguments, flat (as the report lists)."""
        return {"algorithm": self.params.algorithm, **self.params.library}

    def fit(self, interactions: Interactions) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        matrix = interactions.to_csr()
        matrix.data[:] = 1.0
        als = self.params.algorithm == "als"
        cls = AlternatingLeastSquares if als else BayesianPersonalizedRanking
        params = {"random_state": 0, **self.params.library}
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
