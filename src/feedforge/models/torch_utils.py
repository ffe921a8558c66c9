"""What the torch models share: device choice, seeding, batching and one persistence path.

:class:`TorchModel` saves a torch model into a directory of three files, none of them pickled:

* ``weights.safetensors``: the network's ``state_dict`` (keys prefixed ``net.``) and the
  declared arrays serving publishes (e.g. ``user_embeddings``, ``item_embeddings``);
* ``params.json``: the hyper-parameters (``{"params": get_params()}``);
* ``manifest.json``: artifact ``model/<name>``, the inputs, the sizes that rebuild the network
  and any fitted state beside the weights, written last.

At load the network is rebuilt from the manifest's sizes and every tensor's shape is checked
against it. ``torch.load`` is never used: it unpickles; ``safetensors.torch.load_file`` only
reads tensors.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from feedforge.artifacts import MANIFEST, Manifest, require_file
from feedforge.errors import ArtifactError, NotFittedError, ValidationError
from feedforge.models.arrays import ArraySpec
from feedforge.models.base import Model

WEIGHTS = "weights.safetensors"
NET_PREFIX = "net."


def resolve_device(device: str) -> torch.device:
    """The torch device for a ``device`` setting.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        ValidationError: an unknown setting, or ``"cuda"`` without a CUDA device.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValidationError("device='cuda' but torch sees no CUDA device; use 'auto'")
        return torch.device("cuda")
    raise ValidationError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


@contextlib.contextmanager
def seeded(random_state: int, device: torch.device) -> Iterator[torch.Generator]:
    """Run a block with torch's global RNG seeded, and restored afterwards.

    Parameter initialisation and dropout draw from the global RNG; forking it keeps training
    reproducible without changing the caller's random stream. Deterministic algorithms are
    switched on for the block (warn-only: a few CUDA kernels have no deterministic variant,
    so CUDA runs are close, not bitwise equal). CPU runs with the same thread count are
    bitwise reproducible.

    Yields:
        A CPU generator seeded with ``random_state`` for shuffling and negative sampling.
    """
    devices = [device] if device.type == "cuda" else []
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(random_state)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield torch.Generator().manual_seed(random_state)
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled ``(<=batch_size,)`` int64 index batches covering ``range(n)`` once."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def bucketed_minibatches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator, pool: int = 64
) -> Iterator[torch.Tensor]:
    """Shuffled ``(<=batch_size,)`` int64 index batches covering ``range(len(lengths))`` once,
    each of rows of similar length.

    The rows are shuffled, cut into pools of ``pool`` batches, sorted by length inside each
    pool and cut into batches; the batches are then shuffled. A batch is padded to its
    longest row, so on data where most sequences are short (Amazon: median 6 items, a few
    hundred) this cuts the padded positions a step computes several-fold while every epoch
    still sees the rows in a new random grouping.
    """
    order = torch.randperm(len(lengths), generator=generator)
    batches: list[torch.Tensor] = []
    for chunk in order.split(batch_size * pool):
        by_length = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(by_length.split(batch_size))
    for j in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[j]


def pad_sequences(sequences: list[np.ndarray], length: int, shift: int = 1) -> np.ndarray:
    """The last ``length`` items of each sequence, left-aligned and right-padded with 0.

    Args:
        sequences: Item index arrays.
        length: Width of the output.
        shift: Added to every item so that 0 can mean padding.

    Returns:
        ``(len(sequences), length)`` int64 array.
    """
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = np.asarray(seq[-length:], dtype=np.int64) if length else seq[:0]
        out[row, : len(tail)] = tail + shift
    return out


class TorchModel(Model):
    """Save and load a model made of a torch network plus declared float32 arrays.

    A subclass sets :attr:`ARRAYS` (kept in attributes ``<name>_``, shapes from manifest
    counts) and implements :meth:`_net` and :meth:`_empty_net`; it may add sizes
    (:meth:`_net_counts`) and JSON state (:meth:`_net_state`, restored by :meth:`_restore`).
    """

    ARRAYS: ClassVar[tuple[ArraySpec, ...]] = ()
    checkpoint_dir: Path | None = None
    """Where training writes a checkpoint per epoch and resumes from one
    (:class:`feedforge.models.distributed.Checkpoint`); None: no checkpoints. Set by
    :meth:`checkpoint_to`."""
    checkpoint_data: str = ""
    """What the model learns from (the dataset version): a checkpoint of other data is not
    resumed."""

    def checkpoint_to(self, directory: Path | None, data: str) -> None:
        """Checkpoint training into ``directory`` (None: don't), for data ``data``."""
        self.checkpoint_dir, self.checkpoint_data = directory, data

    def checkpoint_key(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the model, its hyper-parameters and
        its data."""
        return {"model": self.name, "params": self.get_params(), "data": self.checkpoint_data}

    @abstractmethod
    def _net(self) -> torch.nn.Module:
        """The fitted network; NotFittedError before fit or load."""

    @abstractmethod
    def _empty_net(self, counts: Mapping[str, int]) -> torch.nn.Module:
        """A network of the saved shape, from the manifest's counts, to load weights into.

        Raises:
            KeyError, TypeError, ValueError: the counts lack a size or hold a bad one.
        """

    def _net_counts(self) -> dict[str, int]:
        """Sizes of the fitted network that :meth:`_empty_net` needs besides the arrays'."""
        return {}

    def _net_state(self) -> dict[str, Any]:
        """JSON fitted state beside the weights, kept in the manifest's ``extra``."""
        return {}

    @abstractmethod
    def _restore(self, net: torch.nn.Module, extra: Mapping[str, Any]) -> None:
        """Adopt the loaded network (built by :meth:`_empty_net`) and the manifest's
        ``extra`` state.

        Raises:
            KeyError, TypeError, ValueError, AttributeError: malformed ``extra`` state.
        """

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {spec.name: getattr(self, f"{spec.name}_", None) for spec in self.ARRAYS}
        if any(array is None for array in arrays.values()):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return arrays  # type: ignore[return-value]

    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        self._net()  # NotFittedError before anything is written
        arrays = self._arrays()
        counts: dict[str, int] = {}
        for spec in self.ARRAYS:
            counts.update(zip(spec.axes, (int(n) for n in arrays[spec.name].shape), strict=True))
        counts.update(self._net_counts())
        return counts, self._net_state()

    def _write_files(self, directory: Path) -> None:
        tensors = {
            NET_PREFIX + key: value.detach().to("cpu").contiguous()
            for key, value in self._net().state_dict().items()
        }
        for key, array in self._arrays().items():
            tensors[key] = torch.from_numpy(np.ascontiguousarray(array))
        save_file(tensors, str(directory / WEIGHTS), metadata={"artifact": self.artifact()})
        self._write_params_file(directory)

    @classmethod
    def _read_files(cls, directory: Path, manifest: Manifest, build_command: str) -> Self:
        model, _ = cls._read_params_file(directory, build_command)
        weights_path = require_file(directory / WEIGHTS, f"{cls.name} weights", build_command)
        try:
            tensors = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(
                weights_path, f"corrupt {cls.name} weights ({exc})", build_command
            ) from exc
        try:
            net = model._empty_net(manifest.counts)
            shapes = {
                spec.name: tuple(int(manifest.counts[axis]) for axis in spec.axes)
                for spec in cls.ARRAYS
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                directory / MANIFEST, f"corrupt manifest counts ({exc})", build_command
            ) from exc
        _restore_net(net, tensors, weights_path, build_command)
        for spec in cls.ARRAYS:
            array = _array_tensor(
                tensors, spec.name, shapes[spec.name], weights_path, build_command
            )
            setattr(model, f"{spec.name}_", array)
        try:
            model._restore(net, manifest.extra)
        except (KeyError, TypeError, ValueError, AttributeError, ValidationError) as exc:
            raise ArtifactError(
                directory / MANIFEST, f"corrupt {cls.name} description ({exc})", build_command
            ) from exc
        return model


def _restore_net(
    net: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, build_command: str
) -> None:
    """Load the ``net.``-prefixed tensors into ``net``; refuse missing or misshapen ones."""
    state = {k[len(NET_PREFIX) :]: v for k, v in tensors.items() if k.startswith(NET_PREFIX)}
    expected = net.state_dict()
    problems = sorted(set(expected) ^ set(state))
    problems += [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if problems:
        raise ArtifactError(
            path, f"weights do not match the network: {', '.join(problems[:5])}", build_command
        )
    net.load_state_dict(state)


def _array_tensor(
    tensors: dict[str, torch.Tensor],
    key: str,
    shape: tuple[int, ...],
    path: Path,
    build_command: str,
) -> np.ndarray:
    """A saved float32 array of ``shape`` as numpy; refuse a missing, misshapen or non-finite
    one."""
    tensor = tensors.get(key)
    if tensor is None or tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
        got = None if tensor is None else (tuple(tensor.shape), str(tensor.dtype))
        raise ArtifactError(
            path, f"corrupt {key}: expected float32 {shape}, got {got}", build_command
        )
    array = tensor.numpy()
    if not np.isfinite(array).all():
        raise ArtifactError(path, f"corrupt {key}: non-finite values", build_command)
    return np.ascontiguousarray(array)
