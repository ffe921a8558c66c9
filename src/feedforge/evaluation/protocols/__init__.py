"""Named offline evaluation protocols, each a faithful copy of a published one.

A protocol turns an interactions frame into a :class:`ProtocolSplit`: one validation fold (for
choosing hyper-parameters, and nothing else) and one test fold (the numbers we report), each
with the training interactions, the held-out relevant items, the items never to rank and the
users to average over. :func:`evaluate_fold` scores a model fitted on ``fold.train``.

Input frame (polars): ``user_id`` and ``item_id`` (strings), ``timestamp`` (UTC datetime) and
an optional nullable float ``rating``. Row order matters where the source's randomness follows
file order (``msr-stratified``); keep the rows as the source file lists them.

Registered protocols (:data:`PROTOCOLS`; details in each function's docstring):

* ``msr-stratified``: Microsoft Recommenders' MovieLens benchmark split and metrics.
* ``leave-one-out``: SASRec's last / second-to-last item per user, full or sampled ranking.
* ``temporal``: one global time split, feedforge's own default protocol.
* ``strong-generalization``: Liang et al. 2018 (Mult-VAE) held-out users with fold-in.

Metric names are ``<name>@<K>``, one definition per name, whatever the protocol (see
:mod:`feedforge.evaluation.metrics` for formulas): ``ndcg``, ``recall`` (``H / min(K, R)``),
``recall_total`` (``H / R``), ``precision``, ``map`` (divides by ``min(K, R)``), ``map_total``
(divides by ``R``: Microsoft Recommenders' ``map``), ``hitrate`` (alias ``hr``) and
``coverage``.

Modules (import from this package; the layout below is internal):

* ``base``: :class:`EvalFold`, :class:`ProtocolSplit` and the frame helpers every protocol
  shares (schema check, index columns, fold assembly).
* ``msr``: ``msr-stratified``.
* ``next_item``: ``leave-one-out``.
* ``time_split``: ``temporal``.
* ``heldout_users``: ``strong-generalization``.
* ``registry``: :data:`PROTOCOLS` and :func:`build_protocol`.
* ``scoring``: :func:`evaluate_fold`.
"""

from feedforge.evaluation.protocols.base import EvalFold, ProtocolSplit
from feedforge.evaluation.protocols.heldout_users import strong_generalization
from feedforge.evaluation.protocols.msr import msr_stratified, msr_stratified_rows
from feedforge.evaluation.protocols.next_item import leave_one_out
from feedforge.evaluation.protocols.registry import PROTOCOLS, build_protocol
from feedforge.evaluation.protocols.scoring import (
    evaluate_fold,
    fold_metrics,
    per_user_values,
    rank_fold,
)
from feedforge.evaluation.protocols.time_split import temporal

__all__ = [
    "PROTOCOLS",
    "EvalFold",
    "ProtocolSplit",
    "build_protocol",
    "evaluate_fold",
    "fold_metrics",
    "leave_one_out",
    "msr_stratified",
    "msr_stratified_rows",
    "per_user_values",
    "rank_fold",
    "strong_generalization",
    "temporal",
]
