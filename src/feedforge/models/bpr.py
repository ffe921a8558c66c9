"""Matrix factorisation trained with Bayesian Personalized Ranking (Rendle et al., UAI 2009).

BPR maximises ``sum ln sigmoid(x_u . y_i - x_u . y_j)`` over sampled triples of a user ``u``, an
item ``i`` they interacted with and an item ``j`` they did not, with L2 regularisation, by SGD.
Training uses :class:`implicit.cpu.bpr.BayesianPersonalizedRanking`, which

- samples the positive pair uniformly over the stored interactions and the negative item from
  the item column of a second random interaction, i.e. proportionally to item popularity;
- with ``verify_negative_samples`` skips a negative the user has interacted with;
- learns an item bias as an extra factor column whose user side is fixed at 1.

So the embeddings have ``D = factors + 1`` columns: ``user_embeddings()`` ends with a column of
ones, ``item_embeddings()`` with the item biases, and their dot product is exactly implicit's
score (bias included). Users without training data get only the bias (a popularity ranking).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from implicit.cpu.bpr import BayesianPersonalizedRanking
from pydantic import Field

from feedforge.datasets.interactions import Interactions
from feedforge.models.arrays import ArraySpec
from feedforge.models.factors import FactorModel
from feedforge.models.params import ModelParams


class BPRParams(ModelParams):
    """Hyper-parameters of :class:`BPRRecommender` (documented there)."""

    factors: int = Field(64, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    regularization: float = Field(0.01, ge=0)
    iterations: int = Field(100, ge=1)
    random_state: int = Field(0, ge=0)
    num_threads: int = Field(1, ge=0)


class BPRRecommender(FactorModel):
    """BPR matrix factorisation: ``score(u, i) = user_embeddings()[u] . item_embeddings()[i]``.

    Interaction weights are ignored (any positive counts once), as in implicit.

    Args:
        factors: Latent factors; the embeddings have ``factors + 1`` columns (item bias).
        learning_rate: SGD step size.
        regularization: L2 strength on the factors touched by each update.
        iterations: Epochs; each draws as many triples as there are (user, item) positives.
        random_state: Seed of the initial factors and of the samplers.
        num_threads: SGD threads. Updates race between threads (Hogwild), so only
            ``num_threads=1`` gives the same model for the same ``random_state``; ``0`` uses
            every core.

    Attributes:
        user_factors_: ``(n_users, factors + 1)`` float32 user vectors; last column is 1.
        item_factors_: ``(n_items, factors + 1)`` float32 item vectors; last column is the bias.

    Example::

        model = BPRRecommender(factors=64).fit(train)
        ids, scores = model.recommend(np.array([0, 1]), k=10, exclude=train.to_csr())
    """

    name: ClassVar[str] = "bpr"
    Params = BPRParams
    params: BPRParams
    ARRAYS = (
        ArraySpec("user_factors", ("n_users", "dim")),
        ArraySpec("item_factors", ("n_items", "dim")),
    )

    DIVERGED_HINT = "lower learning_rate or raise regularization"

    def _solver(
        self, interactions: Interactions
    ) -> tuple[BayesianPersonalizedRanking, sp.csr_matrix]:
        """implicit's BPR and the binary matrix of the positives (it reads only which entries
        are stored)."""
        p = self.params
        user_items = interactions.to_csr()
        user_items.data[:] = 1.0
        solver = BayesianPersonalizedRanking(
            factors=p.factors,
            learning_rate=p.learning_rate,
            regularization=p.regularization,
            dtype=np.float32,
            iterations=p.iterations,
            num_threads=p.num_threads,
            verify_negative_samples=True,
            random_state=p.random_state,
        )
        return solver, user_items
