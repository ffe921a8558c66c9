"""Helpers shared by the torch models: device choice, seeding, batching and persistence.

Torch models save into a directory of three files, none of them pickled:

* ``weights.safetensors``: the network's ``state_dict`` (keys prefixed ``net.``) and the
  precomputed embeddings serving publishes (``user_embeddings``, ``item_embeddings``);
* ``params.json``: the hyper-parameters (``{"params": get_params()}``);
* ``manifest.json``: artifact ``model/<name>``, schema version and sizes, written last.

``torch.load`` is never used: it unpickles. ``safetensors.torch.load_file`` only reads tensors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from feedforge.artifacts import MANIFEST, Manifest, read_manifest, require_file, write_manifest
from feedforge.errors import ArtifactError, ValidationError

Device = Literal["auto", "cpu", "cuda"]
SCHEMA_VERSION = 1
WEIGHTS = "weights.safetensors"
PARAMS = "params.json"
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


def check_positive_int(problems: list[str], name: str, value: Any, minimum: int = 1) -> None:
    """Append a message to ``problems`` unless ``value`` is an int ``>= minimum``."""
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not is_int or value < minimum:
        problems.append(f"{name} must be an int >= {minimum}, got {value!r}")


def save_torch_model(
    directory: Path,
    name: str,
    params: dict[str, Any],
    net: torch.nn.Module,
    embeddings: dict[str, np.ndarray],
    counts: dict[str, int],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``weights.safetensors``, ``params.json`` and the manifest (last).

    Args:
        directory: The model directory (created if needed).
        name: The model name; the artifact is ``model/<name>``.
        params: The hyper-parameters (JSON-serialisable).
        net: The network whose ``state_dict`` is saved (moved to CPU).
        embeddings: Extra float arrays saved beside the weights, e.g. ``user_embeddings``.
        counts: Sizes recorded in the manifest and checked at load.
        extra: Fitted state beside the weights (JSON), kept in the manifest's ``extra``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The manifest goes first and comes back last: a half-written directory reads as
    # incomplete, never as the old model with some of the new files.
    (directory / MANIFEST).unlink(missing_ok=True)
    tensors = {
        NET_PREFIX + key: value.detach().to("cpu").contiguous()
        for key, value in net.state_dict().items()
    }
    for key, array in embeddings.items():
        tensors[key] = torch.from_numpy(np.ascontiguousarray(array))
    save_file(tensors, str(directory / WEIGHTS), metadata={"artifact": f"model/{name}"})
    (directory / PARAMS).write_text(json.dumps({"params": params}, indent=2), encoding="utf-8")
    write_manifest(
        directory,
        Manifest(
            artifact=f"model/{name}",
            schema_version=SCHEMA_VERSION,
            counts=counts,
            extra={"params": params, **(extra or {})},
        ),
    )


def read_torch_model(
    directory: Path, name: str, build_command: str
) -> tuple[Manifest, dict[str, Any], dict[str, torch.Tensor]]:
    """Read what :func:`save_torch_model` wrote.

    Returns:
        The manifest, the hyper-parameters and every tensor of ``weights.safetensors``.

    Raises:
        ArtifactError: the directory or a file is missing or corrupt.
    """
    directory = Path(directory)
    manifest = read_manifest(directory, f"model/{name}", (SCHEMA_VERSION,), build_command)
    params_path = require_file(directory / PARAMS, f"{name} parameters", build_command)
    try:
        params = json.loads(params_path.read_text(encoding="utf-8"))["params"]
        if not isinstance(params, dict):
            raise TypeError("params is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(
            params_path, f"corrupt {name} parameters ({exc})", build_command
        ) from exc
    weights_path = require_file(directory / WEIGHTS, f"{name} weights", build_command)
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(weights_path, f"corrupt {name} weights ({exc})", build_command) from exc
    return manifest, params, tensors


def manifest_sizes(manifest: Manifest, directory: Path, build_command: str) -> tuple[int, int]:
    """``(n_users, n_items)`` from a torch model's manifest counts; refuse missing ones."""
    try:
        n_users, n_items = int(manifest.counts["n_users"]), int(manifest.counts["n_items"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            directory / MANIFEST, f"corrupt manifest counts ({exc})", build_command
        ) from exc
    return n_users, n_items


def restore_net(
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


def embedding_tensor(
    tensors: dict[str, torch.Tensor],
    key: str,
    shape: tuple[int, int],
    path: Path,
    build_command: str,
) -> np.ndarray:
    """A saved ``(rows, D)`` float32 embedding matrix as numpy; refuse a bad one."""
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
