"""Numbered, never-overwritten model versions in a Triton model repository."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from contract.model_spec import (
    Manifest,
    ModelSpec,
    pinned_version_policy,
    with_version_policy,
)
from export.tiny import copy_tokenizer_files

DEFAULT_PARAMETERS = {"intra_op_threads": "2"}


def existing_versions(repo: Path, name: str) -> list[int]:
    """Numeric version directories of ``<repo>/<name>/``, sorted."""
    model_dir = Path(repo) / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def trained_versions(repo: Path, name: str) -> list[int]:
    """Versions of ``repo/name`` exported by ``train`` (their manifest records training steps)."""
    out = []
    for v in existing_versions(repo, name):
        folder = Path(repo) / name / str(v)
        try:
            if (folder / "model.onnx").is_file() and Manifest.read(folder / "manifest.json").training.get("steps"):
                out.append(v)
        except (OSError, ValueError):
            continue
    return out


def next_version(repo: Path, name: str) -> int:
    """1 + the largest existing version number (so a gap is never filled), or 1.

    Any entry named by a number counts, directory or not, so a number is never reused."""
    model_dir = Path(repo) / name
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(taken, default=0) + 1


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(repo: Path, spec: ModelSpec, *, backend: str = "python",
                 parameters: dict[str, str] | None = None) -> Path:
    """Write ``<repo>/<spec.name>/config.pbtxt`` (atomically) from the spec.

    A policy naming specific versions (a roll-out's, ``rerankd model``) is kept: with the
    spec's newest-version policy, a Triton restart would load a version just exported, and
    gateways would serve it, before anyone chose to roll it out."""
    path = Path(repo) / spec.name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    params = DEFAULT_PARAMETERS if parameters is None else parameters
    text = spec.config_pbtxt(backend=backend, parameters=params)
    pinned = pinned_version_policy(path.read_text()) if path.is_file() else None
    if pinned is not None:
        text = with_version_policy(text, pinned)
    _write_text_atomic(path, text)
    return path


def write_version(repo: Path, spec: ModelSpec, onnx_path: Path, tokenizer_dir: Path,
                  manifest: Manifest, *, backend_src: Path,
                  parameters: dict[str, str] | None = None,
                  extra_files: dict[str, Path] | None = None) -> int:
    """Create ``<repo>/<spec.name>/<N>/`` with model.onnx, model.py, the tokenizer files and
    manifest.json, and (re)write ``config.pbtxt``; returns N. ``extra_files`` (name in the
    version -> file or folder) adds an engine variant's files (``export.engines``).

    The version is assembled in ``<repo>/<spec.name>/.tmp-*`` and renamed into place, so a
    reader sees either nothing or a complete version; an existing version is never touched
    (a concurrent writer that takes N first makes this one move on to N+1).
    """
    model_dir = Path(repo) / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    backend_src = Path(backend_src)
    if not backend_src.is_file():
        raise FileNotFoundError(f"backend model.py not found: {backend_src}")
    if not manifest.created_at:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = dataclasses.replace(manifest, created_at=now)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    try:
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        shutil.copyfile(backend_src, tmp / "model.py")
        copy_tokenizer_files(Path(tokenizer_dir), tmp)
        for name, src in (extra_files or {}).items():
            if Path(src).is_dir():
                shutil.copytree(src, tmp / name)
            else:
                shutil.copyfile(src, tmp / name)
        manifest.write(tmp / "manifest.json")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        write_config(repo, spec, parameters=parameters)
        for _ in range(100):
            version = next_version(repo, spec.name)
            try:
                os.rename(tmp, model_dir / str(version))
                return version
            except OSError as exc:  # another writer took this number first
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        raise RuntimeError(f"could not claim a version number in {model_dir}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
