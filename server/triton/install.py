"""Obtain the official ``tritonserver`` binary without Docker.

The ``nvidia-pytriton`` wheel carries Triton 2.51's server binary, the Python backend and
its stubs. We install only the wheel's files into a private folder (``--no-deps``: its
pins on numpy/tritonclient must not leak into our venv) and lay out a backend directory
with the stub for the running Python's minor version.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PYTRITON_VERSION = "0.7.0"


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path
    lib_dir: Path

    @classmethod
    def at(cls, install_dir: Path) -> "TritonInstall":
        pkg = install_dir / "pkg"
        return cls(
            binary=pkg / "pytriton" / "tritonserver" / "bin" / "tritonserver",
            backend_dir=install_dir / "backends",
            lib_dir=pkg / "nvidia_pytriton.libs",
        )

    def is_complete(self) -> bool:
        stub = self.backend_dir / "python" / "triton_python_backend_stub"
        return self.binary.exists() and stub.exists() and self.lib_dir.is_dir()


def ensure_triton(install_dir: Path, log=print) -> TritonInstall:
    """Install the Triton binary into ``install_dir`` if it is not there yet."""
    inst = TritonInstall.at(install_dir)
    if inst.is_complete():
        return inst
    pkg = install_dir / "pkg"
    log(f"==> installing Triton Inference Server binary (nvidia-pytriton=={PYTRITON_VERSION}, ~150 MB) into {pkg}")
    if pkg.exists():
        shutil.rmtree(pkg)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "on",
         "--target", str(pkg), f"nvidia-pytriton=={PYTRITON_VERSION}"],
        check=True,
    )
    server_dir = pkg / "pytriton" / "tritonserver"
    if inst.backend_dir.exists():
        shutil.rmtree(inst.backend_dir)
    shutil.copytree(server_dir / "backends", inst.backend_dir)
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / minor / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton has no Python-backend stub for Python {minor}")
    shutil.copy2(stub, inst.backend_dir / "python" / "triton_python_backend_stub")
    if not inst.is_complete():
        raise RuntimeError(f"Triton install in {install_dir} is incomplete")
    log(f"==> Triton binary ready: {inst.binary}")
    return inst
