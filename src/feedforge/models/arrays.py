"""One persistence path for the array models (ALS, BPR, EASE, popularity).

An array model only declares its learned arrays (:class:`ArraySpec`: the attribute, the
manifest counts that are its shape, dense or CSR); :class:`ArrayModel` saves each as
``<name>.npy`` (a CSR matrix as ``<name>.npz`` of ``data``, ``indices``, ``indptr``), the
hyper-parameters and any JSON state in ``params.json``, and the shapes as manifest counts. At
load every file is read with ``allow_pickle=False`` and refused, naming its path, when it is
missing, unreadable, of another shape than the manifest says, or not finite.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from feedforge.artifacts import MANIFEST, Manifest, require_file
from feedforge.errors import ArtifactError, NotFittedError
from feedforge.models.base import PARAMS_FILE, Model


@dataclass(frozen=True)
class ArraySpec:
    """One learned array of a model.

    Attributes:
        name: The file stem; the model keeps the array in the attribute ``<name>_``.
        axes: The manifest count naming each axis' size, e.g. ``("n_users", "factors")``.
        dtype: The dtype the array is saved and loaded as.
        sparse: A ``(rows, cols)`` CSR matrix instead of a dense array; its number of stored
            values is the count ``nnz_<name>`` (``nnz`` in artifacts written before a model
            could have two sparse arrays).
    """

    name: str
    axes: tuple[str, ...]
    dtype: type[np.floating[Any]] = np.float32
    sparse: bool = False

    @property
    def filename(self) -> str:
        """``<name>.npz`` for a CSR matrix, ``<name>.npy`` otherwise."""
        return f"{self.name}.npz" if self.sparse else f"{self.name}.npy"


class ArrayModel(Model):
    """Save and load a model whose learned state is a few numpy arrays (see the module docs).

    Subclasses set :attr:`ARRAYS`; they may override :meth:`_state` and :meth:`_restore`
    for JSON state beside the arrays and anything derived from them.
    """

    ARRAYS: ClassVar[tuple[ArraySpec, ...]]

    def _arrays(self) -> dict[str, Any]:
        """Each declared array by name; NotFittedError when one is missing."""
        arrays = {spec.name: getattr(self, f"{spec.name}_", None) for spec in self.ARRAYS}
        if any(array is None for array in arrays.values()):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")
        return arrays

    def _state(self) -> dict[str, Any]:
        """JSON-ready fitted state beside the arrays, saved in ``params.json``."""
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        """Set the fitted state from what :meth:`_state` returned (arrays already loaded).

        Raises:
            KeyError, TypeError, ValueError: ``state`` is incomplete or malformed.
        """
        del state

    def _describe(self) -> tuple[dict[str, int], dict[str, Any]]:
        counts: dict[str, int] = {}
        for spec in self.ARRAYS:
            array = self._arrays()[spec.name]
            for axis, size in zip(spec.axes, array.shape, strict=True):
                if counts.setdefault(axis, int(size)) != size:  # a bug, not bad input
                    raise ValueError(f"{spec.name}: axis {axis} is {size}, not {counts[axis]}")
            if spec.sparse:
                counts[f"nnz_{spec.name}"] = int(array.nnz)
        return counts, {}

    def _write_files(self, directory: Path) -> None:
        for spec in self.ARRAYS:
            array = self._arrays()[spec.name]
            if spec.sparse:
                np.savez(
                    directory / spec.filename,
                    data=array.data,
                    indices=array.indices,
                    indptr=array.indptr,
                )
            else:
                np.save(directory / spec.filename, array, allow_pickle=False)
        self._write_params_file(directory, **self._state())

    @classmethod
    def _read_files(cls, directory: Path, manifest: Manifest, build_command: str) -> Self:
        model, state = cls._read_params_file(directory, build_command)
        for spec in cls.ARRAYS:
            shape = tuple(manifest.counts.get(axis) for axis in spec.axes)
            if not all(isinstance(size, int) and size >= 0 for size in shape):
                raise ArtifactError(
                    directory / MANIFEST,
                    f"{cls.name} manifest lacks the counts {list(spec.axes)}",
                    build_command,
                )
            path = require_file(directory / spec.filename, f"{cls.name} {spec.name}", build_command)
            if spec.sparse:
                nnz = manifest.counts.get(f"nnz_{spec.name}", manifest.counts.get("nnz"))
                array = _read_sparse(spec, path, shape, nnz, cls.name, build_command)
            else:
                array = _read_dense(spec, path, shape, cls.name, build_command)
            setattr(model, f"{spec.name}_", array)
        try:
            model._restore(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                directory / PARAMS_FILE, f"corrupt {cls.name} state ({exc})", build_command
            ) from exc
        return model


def _read_dense(
    spec: ArraySpec, path: Path, shape: tuple[Any, ...], model: str, build_command: str
) -> np.ndarray:
    """A saved dense array of ``shape``; ArtifactError naming ``path`` otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ArtifactError(path, f"corrupt {model} {spec.name} ({exc})", build_command) from exc
    if array.shape != shape or not np.isfinite(array).all():
        raise ArtifactError(
            path,
            f"corrupt {model} {spec.name}: expected a finite {shape} array, got {array.shape}",
            build_command,
        )
    return np.ascontiguousarray(array, dtype=spec.dtype)


def _read_sparse(
    spec: ArraySpec,
    path: Path,
    shape: tuple[Any, ...],
    nnz: object,
    model: str,
    build_command: str,
) -> sp.csr_matrix:
    """A saved ``shape`` CSR matrix with ``nnz`` stored values (the manifest's count);
    ArtifactError naming ``path`` otherwise."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
        matrix = sp.csr_matrix((data, indices, indptr), shape=shape)
        matrix.check_format(full_check=True)
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile) as exc:  # fmt: skip
        # AttributeError: the file is a plain .npy, whose array has no context manager.
        raise ArtifactError(path, f"corrupt {model} {spec.name} ({exc})", build_command) from exc
    if matrix.nnz != nnz or not np.isfinite(matrix.data).all():
        raise ArtifactError(
            path, f"corrupt {model} {spec.name}: non-finite values or wrong nnz", build_command
        )
    return sp.csr_matrix(matrix, dtype=spec.dtype)
