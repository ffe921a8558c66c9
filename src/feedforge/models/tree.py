"""A shallow decision-tree ranker: the interpretable baseline whose whole model prints on a page.

Trained with scikit-learn's ``DecisionTreeClassifier`` (CART, Gini impurity), stored and
applied as plain arrays: each node's feature, threshold and children, and each leaf's
positive rate. A row goes left when ``float32(x[feature]) <= threshold`` (scikit-learn's own
rule, so a loaded tree predicts exactly what the trained one did), and its probability is the
training positive rate of the leaf it lands in. No pickle: the saved JSON is the whole model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import Field
from sklearn.tree import DecisionTreeClassifier

from feedforge.artifacts import Manifest, require_file
from feedforge.errors import ArtifactError, NotFittedError
from feedforge.models.base import Ranker
from feedforge.models.params import ModelParams
from feedforge.models.ranker_utils import (
    check_features,
    check_fit_input,
    ranker_description,
    write_ranker_files,
)

_MODEL_FILE = "tree.json"
_LEAF = -1


class TreeParams(ModelParams):
    """Hyper-parameters of :class:`DecisionTreeRanker` (documented there)."""

    max_depth: int = Field(5, ge=1)
    min_samples_leaf: int = Field(200, ge=1)
    random_state: int = 0


class DecisionTreeRanker(Ranker):
    """CART decision tree of bounded depth; each leaf predicts its training positive rate.

    Args:
        max_depth: Deepest split level (the tree has at most ``2 ** max_depth`` leaves).
        min_samples_leaf: Fewest training rows in a leaf (keeps leaf rates stable).
        random_state: Seed of scikit-learn's feature permutation (ties between splits).

    Attributes:
        feature_names_: The ``F`` feature names, in the column order of ``X``.
        left_, right_: ``(n_nodes,)`` int64 child node ids (``-1`` at leaves).
        feature_: ``(n_nodes,)`` int64 split feature (``-1`` at leaves).
        threshold_: ``(n_nodes,)`` float64 split threshold.
        rate_: ``(n_nodes,)`` float64 (weighted) positive rate of the training rows reaching
            each node.
        samples_: ``(n_nodes,)`` int64 training rows reaching each node.

    Example::

        ranker = DecisionTreeRanker(max_depth=4).fit(X, y, feature_names)
        print(ranker.describe())
    """

    name: ClassVar[str] = "tree"
    Params = TreeParams
    params: TreeParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.feature_names_: list[str] | None = None
        self.left_: np.ndarray | None = None
        self.right_: np.ndarray | None = None
        self.feature_: np.ndarray | None = None
        self.threshold_: np.ndarray | None = None
        self.rate_: np.ndarray | None = None
        self.samples_: np.ndarray | None = None

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        feature_names: list[str],
        group: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        targets: Mapping[str, np.ndarray] | None = None,
    ) -> Self:
        """Grow the tree on ``(N, F)`` features and ``(N,)`` binary labels.

        Args:
            X: ``(N, F)`` float features, columns in the order of ``feature_names``.
            y: ``(N,)`` labels in ``{0, 1}``.
            feature_names: ``F`` distinct column names.
            group: ``(N,)`` request keys; a pointwise model ignores them.
            sample_weight: ``(N,)`` weights of the rows (leaf rates become weighted rates).
            targets: Ignored (a single-task ranker; see :class:`~.base.Ranker`).

        Raises:
            ValidationError: bad shapes, names, labels or NaN/inf features.
            DataError: no rows, or a single class.
        """
        where = "DecisionTreeRanker.fit"
        fit = check_fit_input(X, y, feature_names, group, sample_weight, where)
        names, X, y, weight = fit.names, fit.X, fit.y, fit.weight
        p = self.params
        model = DecisionTreeClassifier(
            max_depth=p.max_depth, min_samples_leaf=p.min_samples_leaf, random_state=p.random_state
        ).fit(X, y, sample_weight=weight)
        tree = model.tree_
        # value holds per-class weights or (scikit-learn >= 1.4) fractions: normalise either.
        value = np.asarray(tree.value, dtype=np.float64)[:, 0, :]
        positive = list(model.classes_).index(1)
        self.feature_names_ = names
        self.left_ = np.asarray(tree.children_left, dtype=np.int64)
        self.right_ = np.asarray(tree.children_right, dtype=np.int64)
        self.feature_ = np.where(self.left_ == _LEAF, _LEAF, tree.feature).astype(np.int64)
        self.threshold_ = np.asarray(tree.threshold, dtype=np.float64)
        self.rate_ = value[:, positive] / value.sum(axis=1)
        self.samples_ = np.asarray(tree.n_node_samples, dtype=np.int64)
        return self

    def _fitted(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if (
            self.feature_names_ is None
            or self.left_ is None
            or self.right_ is None
            or self.feature_ is None
            or self.threshold_ is None
            or self.rate_ is None
        ):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return self.feature_names_, self.left_, self.right_, self.feature_, self.threshold_

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` int64 leaf node id of each row of ``(N, F)`` features."""
        names, left, right, feature, threshold = self._fitted()
        X32 = check_features(X, names, "DecisionTreeRanker").astype(np.float32)
        node = np.zeros(len(X32), dtype=np.int64)
        active = np.flatnonzero(left[node] != _LEAF)
        while active.size:  # one pass per tree level, all rows of the level at once
            at = node[active]
            go_left = X32[active, feature[at]] <= threshold[at]
            node[active] = np.where(go_left, left[at], right[at])
            active = active[left[node[active]] != _LEAF]
        return node

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 positive rate of each row's leaf.

        Raises:
            ValidationError: wrong number of columns, or NaN/inf (the message names columns).
        """
        leaves = self.leaves(X)
        assert self.rate_ is not None  # set with the arrays _fitted() checked
        return self.rate_[leaves]

    def describe(self) -> str:
        """The tree as indented rules, with each node's rows and positive rate."""
        names, left, right, feature, threshold = self._fitted()
        assert self.rate_ is not None and self.samples_ is not None
        rate, samples = self.rate_, self.samples_
        lines = [f"decision tree ({int((left == _LEAF).sum())} leaves)"]

        def walk(node: int, depth: int) -> None:
            pad = "  " * depth
            stats = f"n={int(samples[node])}, p={rate[node]:.4f}"
            if left[node] == _LEAF:
                lines.append(f"{pad}leaf: {stats}")
                return
            name, cut = names[int(feature[node])], float(threshold[node])
            lines.append(f"{pad}if {name} <= {cut:.6g}:  ({stats})")
            walk(int(left[node]), depth + 1)
            lines.append(f"{pad}else:  # {name} > {cut:.6g}")
            walk(int(right[node]), depth + 1)

        walk(0, 1)
        return "\n".join(lines)

    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        names, left, _, _, _ = self._fitted()
        return ranker_description(names, {"n_nodes": len(left)})

    def _write_files(self, directory: Path) -> None:
        """Write ``tree.json``: every node, as JSON numbers."""
        names, left, right, feature, threshold = self._fitted()
        assert self.rate_ is not None and self.samples_ is not None
        payload = {
            "feature_names": names,
            "left": left.tolist(),
            "right": right.tolist(),
            "feature": feature.tolist(),
            "threshold": threshold.tolist(),
            "rate": self.rate_.tolist(),
            "samples": self.samples_.tolist(),
            "params": self.get_params(),
        }
        write_ranker_files(directory, {_MODEL_FILE: payload})

    @classmethod
    def _read_files(cls, directory: Path, manifest: Manifest, build_command: str) -> Self:
        """Read ``tree.json``; refuse a node that points outside the tree or a split on a
        feature that does not exist."""
        path = require_file(directory / _MODEL_FILE, "decision tree", build_command)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            params = raw["params"]
            names = [str(n) for n in raw["feature_names"]]
            ints = [np.asarray(raw[k], dtype=np.int64) for k in ("left", "right", "feature")]
            threshold = np.asarray(raw["threshold"], dtype=np.float64)
            rate = np.asarray(raw["rate"], dtype=np.float64)
            samples = np.asarray(raw["samples"], dtype=np.int64)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ArtifactError(path, f"corrupt decision tree ({exc})", build_command) from exc
        model = cls._from_saved_params(params, path, build_command)
        left, right, feature = ints
        n = len(left)
        arrays_ok = n > 0 and all(
            a.shape == (n,) for a in (right, feature, threshold, rate, samples)
        )
        inner = arrays_ok and left != _LEAF
        if not (
            arrays_ok
            and np.isfinite(rate).all()
            and ((rate >= 0) & (rate <= 1)).all()
            and ((left[inner] > np.flatnonzero(inner)) & (left[inner] < n)).all()
            and ((right[inner] > np.flatnonzero(inner)) & (right[inner] < n)).all()
            and ((feature[inner] >= 0) & (feature[inner] < len(names))).all()
        ):
            raise ArtifactError(
                path, "corrupt decision tree: inconsistent node arrays", build_command
            )
        model.feature_names_ = names
        model.left_, model.right_, model.feature_ = left, right, feature
        model.threshold_, model.rate_, model.samples_ = threshold, rate, samples
        return model
