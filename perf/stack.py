"""Triton + gateway for benchmarks: started on free ports, stopped on exit (like
tests/integration/conftest.py), plus the model repository the suite serves."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from server.devstack import local_stack
from server.settings import PROJECT_ROOT, load_settings
from server.triton.install import ensure_triton
from server.triton.launcher import TritonServer, free_port

MODEL = "reranker"
BACKEND_SRC = PROJECT_ROOT / "model_repository" / "reranker" / "model.py"


@dataclass
class Stack:
    triton: TritonServer
    gateway: subprocess.Popen
    addr: str
    repo: Path
    logs: Path

    def reload(self, config_text: str, timeout_s: float = 300) -> None:
        """Rewrite config.pbtxt and reload the model in Triton (explicit mode)."""
        (self.repo / MODEL / "config.pbtxt").write_text(config_text)
        req = urllib.request.Request(f"{self.triton.http_url}/v2/repository/models/{MODEL}/load",
                                     data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            if r.status != 200:
                raise RuntimeError(f"reload failed: HTTP {r.status}")
        self.triton.wait_ready(timeout_s, models=[MODEL])

    def model_stats(self) -> dict:
        with urllib.request.urlopen(f"{self.triton.http_url}/v2/models/{MODEL}/stats", timeout=5) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def launch(repo: Path, db_path: Path, logs: Path, *, max_candidates: int = 1000, score_cache_size: int = 0,
           log=print, env: dict[str, str] | None = None):
    """Triton (model loaded) + ``rerankd serve`` on free ports; yields a ``Stack``; stops both.

    The score cache is off by default: the suite's repeated requests must reach the model."""
    settings = load_settings(env={})
    inst = ensure_triton(settings.triton.install_dir, log=log)
    settings_env = {"RERANKD_TRITON_POLL_INTERVAL_S": "0.5",
                    # Metrics on, as a deployed gateway runs (their cost is part of the figures).
                    "RERANKD_TELEMETRY_METRICS_PORT": str(free_port()),
                    "RERANKD_SERVER_MAX_CANDIDATES": str(max_candidates),
                    "RERANKD_SERVER_MAX_IN_FLIGHT": "256",
                    "RERANKD_SERVER_SCORE_CACHE_SIZE": str(score_cache_size),
                    "RERANKD_STORE_URL": f"sqlite:///{db_path}", **(env or {})}  # env overrides
    with local_stack(inst, repo, logs, **settings_env) as ls:
        log(f"==> Triton {ls.triton.grpc_url} + gateway {ls.addr} up (logs in {logs})")
        yield Stack(ls.triton, ls.gateway, ls.addr, repo, logs)


def prepare_repo(out_repo: Path, *, engine: str, hf_dir: Path | None = None,
                 version_dir: Path | None = None, parameters: dict[str, str] | None = None,
                 render: dict | None = None, log=print) -> Path:
    """A model repository for the suite with one version carrying ``engine``'s files.

    From ``version_dir`` (an existing version: copied, the engine's files built from its
    model.onnx) or else by exporting ``hf_dir`` (default: the packaged MiniLM) with that
    engine. Returns the version folder."""
    from contract.model_spec import Manifest
    from contract.tokenize import PairTokenizer
    from export.engines import (
        ENGINE_PARAMETERS,
        build_engine_files,
        calibration_feeds,
        encode_requests,
        fallback_requests,
        movielens_requests,
        renderer_for,
    )
    from export.write_repo import DEFAULT_PARAMETERS, write_config

    out_repo = Path(out_repo)
    if out_repo.exists():
        shutil.rmtree(out_repo)
    model_dir = out_repo / MODEL
    params = {**DEFAULT_PARAMETERS, **ENGINE_PARAMETERS[engine], "engine": engine, **(parameters or {})}
    dst = model_dir / "1"
    if version_dir is None:
        # fp32 export (verified against torch); the engine's files are added below without
        # the export-time agreement gate: the suite reports agreement itself.
        from export.build import run_export

        fp32_repo = out_repo.parent / (out_repo.name + "-fp32")
        if fp32_repo.exists():
            shutil.rmtree(fp32_repo)
        version, _ = run_export(hf_dir, fp32_repo, backend_src=BACKEND_SRC, render=render, log=log)
        version_dir = fp32_repo / MODEL / str(version)
    shutil.copytree(version_dir, dst)
    shutil.copyfile(BACKEND_SRC, dst / "model.py")  # today's backend
    manifest = Manifest.read(dst / "manifest.json")
    tok = PairTokenizer.from_file(dst / "tokenizer.json", manifest.spec)
    calib = movielens_requests(24, 32, seed=1, renderer=renderer_for(manifest.render, tok)) or fallback_requests()
    files = build_engine_files(engine, dst / "model.onnx", dst, calibration_feeds(encode_requests(tok, calib)))
    log(f"==> {dst}: engine {engine} files {sorted(files)}")
    write_config(out_repo, manifest.spec, parameters=params)
    return dst
