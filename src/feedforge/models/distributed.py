"""Distributed training of the torch models: PyTorch DDP under torchrun, with checkpoints.

``feedforge train --nproc N`` runs the training stage in ``N`` processes started by torchrun's
launcher (:func:`launch`, ``torch.distributed.launcher``; gloo on CPU, NCCL with one GPU per
process). In every process a torch model's training loop asks :class:`TrainContext` for

* its **shard** of each minibatch (:meth:`TrainContext.batches`): every rank draws the same
  shuffled order (the shuffle generator has the same seed everywhere) and takes every
  ``world``-th row of each global batch of ``batch_size`` rows, so an epoch's steps, and the
  effective batch, are those of one process;
* a **step** (:meth:`TrainContext.step`): the loss function wrapped in
  ``DistributedDataParallel``, which averages the gradients of the ranks in backward, so
  every rank keeps the same weights;
* its own **sampling generator** (:meth:`TrainContext.sampler`): negatives differ per rank;
* the **mean** of a value over the ranks (the reported loss; every rank takes the same
  decisions, e.g. early stopping, from it).

Rank 0 saves the models (:func:`~feedforge.models.train.train_models`); the others wait at a
barrier. Models without a torch network (ALS, LightGBM, ...) are fitted by rank 0 only and
read back from its artifact by the others when a later model needs them.

**Checkpoints.** With a checkpoint directory (``WORKDIR/checkpoints/<model>``, set by the
training stage), rank 0 writes the weights, the optimizer's state, the generators' states
and the loop's own state after every epoch (:class:`Checkpoint`; safetensors and JSON, no
pickle). A training that stops (a killed process, a lost node) resumes from the last epoch
when run again on the same dataset with the same hyper-parameters, with any number of
processes; a finished training removes its checkpoint.

**Embedding tables that outgrow one device.** DDP replicates the whole model on every rank,
so an item table must fit one device. Beyond that, the table is sharded, not replicated:
TorchRec's ``EmbeddingBagCollection`` with its sharding planner (``EmbeddingShardingPlanner``
picks table-wise, row-wise or column-wise sharding per table from the devices' memory and
the tables' sizes, and ``DistributedModelParallel`` wraps the model), the dense layers
staying data-parallel. feedforge's item tables are ``torch.nn.Embedding`` layers; swapping
them for TorchRec's is the path, not a home-made parameter server. It is not implemented
here: the largest table of the benchmarks (1M items x 64 floats, 256 MB) fits one device.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from feedforge.artifacts import write_json_atomic
from feedforge.errors import ConfigError, DataError
from feedforge.models.torch_utils import bucketed_minibatches, minibatches

T = TypeVar("T")

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"


class _LossStep(torch.nn.Module):
    """A network and its loss function as one module whose forward returns the loss: DDP
    then sees every parameter the loss used, inside the network's forward or not."""

    def __init__(self, net: torch.nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.net = net
        self.loss = loss

    def forward(self, *args: Any) -> torch.Tensor:
        return self.loss(self.net, *args)


@dataclass(frozen=True)
class TrainContext:
    """Where a training loop runs: this process's rank among ``world`` (see the module
    docs). ``TrainContext()`` is one process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> TrainContext:
        """The context of this process: its rank in the initialised process group, else
        one process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that saves and reports."""
        return self.rank == 0

    def batches(
        self,
        n: int,
        batch_size: int,
        generator: torch.Generator,
        lengths: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """This rank's rows of each shuffled global batch of ``batch_size`` rows of
        ``range(n)`` (one process: the batches themselves). A last global batch with fewer
        rows than ranks is left out, so that every rank takes the same number of steps.
        With the rows' ``lengths``, each batch holds rows of similar length
        (:func:`~feedforge.models.torch_utils.bucketed_minibatches`)."""
        if lengths is None:
            global_batches = minibatches(n, batch_size, generator)
        else:
            global_batches = bucketed_minibatches(lengths, batch_size, generator)
        for batch in global_batches:
            if self.world == 1:
                yield batch
            elif len(batch) >= self.world:
                yield batch[self.rank :: self.world]

    def sampler(self, generator: torch.Generator, seed: int) -> torch.Generator:
        """The generator of random draws other than the shuffle (negatives): ``generator``
        itself in one process, else one of this rank's own (the shuffle generator must stay
        the same on every rank)."""
        if self.world == 1:
            return generator
        return torch.Generator().manual_seed(seed * 1_000_003 + self.rank + 1)

    def step(
        self,
        net: torch.nn.Module,
        loss: Callable[..., torch.Tensor],
        find_unused: bool = True,
    ) -> Callable[..., torch.Tensor]:
        """``step(*args)`` = ``loss(net, *args)``; with several ranks through
        ``DistributedDataParallel``, which averages the gradients over the ranks in
        backward. ``find_unused``: some parameters may get no gradient in a step (a DCN
        head without a target, a two-tower layer its pooling does not use); DDP then looks
        for them in every step's graph instead of waiting for them."""
        if self.world == 1:
            return lambda *args: loss(net, *args)
        device = next(net.parameters()).device
        wrapped = torch.nn.parallel.DistributedDataParallel(
            _LossStep(net, loss),
            device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None,
            find_unused_parameters=find_unused,
        )
        return wrapped

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over the ranks (the value itself in one process)."""
        if self.world == 1:
            return float(value)
        total = value.detach().clone().to(torch.float64).reshape(1)
        if dist.get_backend() == "nccl":
            total = total.cuda()
        dist.all_reduce(total)
        return float(total) / self.world

    def barrier(self) -> None:
        """Wait for every rank (nothing in one process)."""
        if self.world > 1:
            dist.barrier()


class Checkpoint:
    """The per-epoch checkpoint of one training loop (see the module docs).

    Args:
        directory: Where it lives; None: no checkpointing.
        key: What must match for a resume (the model, its hyper-parameters, the data).
        context: Only the main rank writes.
    """

    def __init__(
        self, directory: Path | None, key: Mapping[str, Any], context: TrainContext
    ) -> None:
        self.directory = directory
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self.context = context

    def restore(
        self,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: Sequence[torch.Generator],
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """Load the last checkpoint into ``net``, ``optimizer``, ``generators`` (the
        shuffle generators: the same on every rank) and torch's global CPU generator
        (dropout). Returns the loop's saved state and any
        extra tensors, or None when there is no checkpoint of this key."""
        if self.directory is None:
            return None
        state_path = self.directory / CHECKPOINT_STATE
        weights_path = self.directory / CHECKPOINT_WEIGHTS
        if not (state_path.is_file() and weights_path.is_file()):
            return None
        try:
            saved = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        torn = saved.get("weights_bytes") != weights_path.stat().st_size
        if saved.get("key") != self.key or torn:
            return None  # another model, other data, or a torn write: start over
        tensors = load_file(weights_path)
        net.load_state_dict(
            {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        )
        _load_optimizer(optimizer, tensors, saved["optimizer"])
        for j, generator in enumerate(generators):
            generator.set_state(tensors[f"generator.{j}"])
        torch.set_rng_state(tensors["generator.global"])  # dropout's draws
        extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        return saved["loop"], extra

    def save(
        self,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: Sequence[torch.Generator],
        loop: Mapping[str, Any],
        extra: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Write the checkpoint (main rank only; the others return at once)."""
        if self.directory is None or not self.context.is_main:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        opt_tensors, opt_state = _optimizer_state(optimizer)
        tensors.update(opt_tensors)
        for j, generator in enumerate(generators):
            tensors[f"generator.{j}"] = generator.get_state()
        tensors["generator.global"] = torch.get_rng_state()
        for k, v in (extra or {}).items():
            tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
        weights = self.directory / CHECKPOINT_WEIGHTS
        tmp = weights.with_suffix(".tmp")
        save_file(tensors, tmp)
        os.replace(tmp, weights)
        write_json_atomic(
            self.directory / CHECKPOINT_STATE,
            {
                "key": self.key,
                "loop": dict(loop),
                "optimizer": opt_state,
                "weights_bytes": weights.stat().st_size,
            },
        )

    def clear(self) -> None:
        """Remove the checkpoint of a finished training (main rank only)."""
        if self.directory is not None and self.context.is_main:
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class EarlyStopping:
    """Early stopping of :func:`train_epochs` on a validation score (higher is better).

    After every epoch the loop calls ``evaluate()`` with the network in eval mode; the
    weights of the best epoch so far are kept, and the loop stops once ``patience`` epochs
    in a row have not beaten it. The network ends with the best epoch's weights.

    Attributes:
        evaluate: The validation score of the network as it is now.
        patience: Epochs without improvement before stopping.
        scores: The score after every epoch run.
        best_epoch: 0-based index of the best epoch (-1 before any).
    """

    evaluate: Callable[[], float]
    patience: int
    scores: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_weights: dict[str, torch.Tensor] | None = None

    def record(self, score: float, net: torch.nn.Module) -> None:
        """Add an epoch's score; keep a copy of the weights when it is the best."""
        self.scores.append(score)
        if self.best_epoch < 0 or score > self.scores[self.best_epoch]:
            self.best_epoch = len(self.scores) - 1
            self.best_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row have not improved on the best."""
        return len(self.scores) - 1 - self.best_epoch >= self.patience

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The loop state and tensors a checkpoint keeps (scores, best epoch, its weights)."""
        tensors = {f"best.{k}": v for k, v in (self.best_weights or {}).items()}
        return {"scores": self.scores, "best_epoch": self.best_epoch}, tensors

    def restore(self, loop: Mapping[str, Any], extra: Mapping[str, torch.Tensor]) -> None:
        """Take back what :meth:`state` saved."""
        self.scores = list(loop.get("scores", []))
        self.best_epoch = int(loop.get("best_epoch", -1))
        best = {k[5:]: v for k, v in extra.items() if k.startswith("best.")}
        self.best_weights = best or None


@dataclass
class TrainHistory:
    """What :func:`train_epochs` measured.

    Attributes:
        losses: Mean training loss of every epoch run (averaged over the ranks).
        seconds: Wall seconds since the start of the training at the end of every epoch
            (validation included; a resumed training continues the count).
        steps: Optimizer steps taken.
        scores: Validation score of every epoch (early stopping only, else empty).
        best_epoch: 0-based epoch whose weights the network ends with (the last one without
            early stopping).
    """

    losses: list[float]
    seconds: list[float]
    steps: int
    scores: list[float]
    best_epoch: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: epochs run, best epoch (1-based), ms per optimizer step,
        seconds to the best epoch and in all."""
        total = self.seconds[-1] if self.seconds else 0.0
        return {
            "epochs_run": len(self.losses),
            "best_epoch": self.best_epoch + 1,
            "steps": self.steps,
            "ms_per_step": round(1000 * total / max(self.steps, 1), 2),
            "seconds_to_best": round(self.seconds[self.best_epoch], 2) if self.seconds else 0.0,
            "seconds": round(total, 2),
        }


def train_epochs(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batches: Callable[[], Iterable[torch.Tensor]],
    loss_of: Callable[[torch.Tensor, int], torch.Tensor],
    checkpoint: Checkpoint,
    generator: torch.Generator,
    where: str,
    early_stopping: EarlyStopping | None = None,
) -> TrainHistory:
    """The epoch loop of the torch models other than DCN (two-tower, SASRec, Mult-VAE):
    resume from ``checkpoint``, run each epoch's ``batches()`` (this rank's shards) through
    ``loss_of(batch, update)`` (``update``: the optimizer steps taken so far, e.g. for an
    annealing schedule) and the optimizer, checkpoint after every epoch, clear the
    checkpoint at the end. With ``early_stopping``, at most ``epochs`` epochs, stopping
    early and ending with the best epoch's weights (see :class:`EarlyStopping`).

    Raises:
        DataError: an epoch's loss is not finite (``where`` names the model).
    """
    context = checkpoint.context
    losses: list[float] = []
    seconds: list[float] = []
    update = 0
    resumed = checkpoint.restore(net, optimizer, [generator])
    if resumed is not None:
        saved, extra = resumed
        losses, update = list(saved["losses"]), int(saved["updates"])
        seconds = list(saved.get("seconds", []))
        if early_stopping is not None:
            early_stopping.restore(saved, extra)
    started = time.perf_counter() - (seconds[-1] if seconds else 0.0)
    device = next(net.parameters()).device
    net.train()
    stopped = early_stopping is not None and bool(losses) and early_stopping.should_stop
    while len(losses) < epochs and not stopped:
        total = torch.zeros((), device=device)
        steps = 0
        for batch in batches():
            loss = loss_of(batch, update)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            steps += 1
            update += 1
        losses.append(context.mean(total) / max(steps, 1))
        if not math.isfinite(losses[-1]):
            raise DataError(f"{where}: training diverged; lower learning_rate")
        loop: dict[str, Any] = {"losses": losses, "updates": update}
        tensors: dict[str, torch.Tensor] = {}
        if early_stopping is not None:
            net.eval()
            with torch.no_grad():
                # The mean over the ranks: every rank takes the same decision.
                early_stopping.record(context.mean(torch.tensor(early_stopping.evaluate())), net)
            net.train()
            state, tensors = early_stopping.state()
            loop.update(state)
            stopped = early_stopping.should_stop
        seconds.append(time.perf_counter() - started)
        loop["seconds"] = seconds
        checkpoint.save(net, optimizer, [generator], loop, tensors)
    best = len(losses) - 1
    if early_stopping is not None and early_stopping.best_weights is not None:
        net.load_state_dict(early_stopping.best_weights)
        best = early_stopping.best_epoch
    checkpoint.clear()
    scores = early_stopping.scores if early_stopping is not None else []
    return TrainHistory(losses, seconds, update, list(scores), best)


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    """An optimizer's state as tensors (``optimizer.<param>.<name>``) and JSON (the rest)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], saved: Any
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param, name = key.split(".", 2)
            state.setdefault(int(param), {})[name] = value
    for param, values in saved["scalars"].items():
        state.setdefault(int(param), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def launch(nproc: int, entrypoint: Callable[..., T], *args: Any) -> T:
    """Run ``entrypoint(*args)`` in ``nproc`` processes on this host with torchrun's
    launcher (``torch.distributed.launcher.elastic_launch``: a c10d rendezvous on a free
    local port, ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set per process). ``entrypoint``
    initialises the process group itself. Returns rank 0's result.

    Raises:
        ConfigError: ``nproc`` < 1.
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: a process
            failed (the others are stopped); its traceback is in the message.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"feedforge-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    results = elastic_launch(config, entrypoint)(*args)
    return results[0]


def init_process_group() -> TrainContext:
    """Join the process group torchrun's environment describes: NCCL with this process's
    GPU (``LOCAL_RANK``) when CUDA is there, else gloo; torch's intra-op threads are split
    between the processes of the host."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return TrainContext.current()
