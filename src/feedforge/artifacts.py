"""Versioned artifacts: how pipeline stages hand work to each other.

Every stage writes a directory with a ``manifest.json`` beside its files: what the artifact is,
its schema version, a unique version id, the versions of the inputs it was made from, row
counts and the feedforge version that wrote it. The next stage reads the manifest first and
refuses a missing, corrupt or unknown-schema artifact with an error that names the path and
the command that builds it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedforge import __version__
from feedforge.errors import ArtifactError

MANIFEST = "manifest.json"


def new_version() -> str:
    """A sortable, unique version id, e.g. ``20261125T204500123Z-3f9a1c``."""
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Manifest:
    """The description of one artifact directory.

    Attributes:
        artifact: What the directory holds, e.g. ``"dataset"`` or ``"model/als"``.
        schema_version: Layout version of the files; readers refuse versions they do not know.
        version: Unique id of this build of the artifact (see :func:`new_version`).
        inputs: Artifact name -> version of each input it was built from.
        counts: Row counts or sizes worth checking at a glance.
        extra: Anything else the stage records (parameters, split dates).
    """

    artifact: str
    schema_version: int
    version: str = field(default_factory=new_version)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    code_version: str = __version__
    inputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def fsync(path: Path) -> None:
    """fsync a file or a directory (a directory: its entries, e.g. a rename, are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` durably (see :func:`write_text_atomic`)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    write_text_atomic(path, text)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text (UTF-8) to ``path`` durably: a temporary file (unique, so concurrent
    writers never share one) is fsynced, renamed over ``path`` and the rename fsynced; on
    failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Write ``manifest.json`` into ``directory`` (last, so its presence marks completion)."""
    write_json_atomic(directory / MANIFEST, asdict(manifest))
    return manifest


def read_manifest(
    directory: Path,
    artifact: str,
    supported: tuple[int, ...],
    build_command: str,
) -> Manifest:
    """Read and check the manifest of an artifact directory.

    Args:
        directory: The artifact directory.
        artifact: The artifact name the caller expects.
        supported: Schema versions the caller can read.
        build_command: The command that (re)builds the artifact, quoted in errors.

    Raises:
        ArtifactError: the directory or manifest is missing or corrupt, or holds another
            artifact or an unknown schema version.
    """
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(directory, f"missing {artifact} artifact directory", build_command)
    if not path.is_file():
        raise ArtifactError(path, f"missing {artifact} manifest (incomplete build?)", build_command)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
        raise ArtifactError(path, f"corrupt {artifact} manifest ({exc})", build_command) from exc
    if manifest.artifact != artifact:
        raise ArtifactError(
            path, f"expected a {artifact} artifact, found {manifest.artifact!r}", build_command
        )
    if manifest.schema_version not in supported:
        raise ArtifactError(
            path,
            f"{artifact} schema version {manifest.schema_version} is not supported "
            f"(this feedforge reads {list(supported)})",
            build_command,
        )
    return manifest


def require_file(path: Path, what: str, build_command: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`ArtifactError` naming it."""
    if not path.is_file():
        raise ArtifactError(path, f"missing {what}", build_command)
    return path
