"""The served scoring path: a real Triton (serving only the evaluated version) behind a real
``rerankd serve`` gateway, with a fresh SQLite store loaded up to the split so served
histories are exactly the split's; every list is sent as one Rerank request."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from contract.blend import Blend
from evaluation.protocol import EvalList
from interactions.to_store import load_into_store
from server.api.pb import reranker_pb2, reranker_pb2_grpc
from server.devstack import local_stack
from server.features import open_store
from server.settings import load_settings
from server.triton.install import ensure_triton

# The rule set the evaluation asks the gateway for: the evaluated blend, in the rules stage.
EVAL_RULE_SET = "rerankd_eval_blend"


@dataclass
class ServedResult:
    model_scores: dict[str, np.ndarray]
    final: dict[str, list[str]]
    version: str
    blended_by_gateway: bool
    seconds: float
    # Per list, the candidates the gateway says it scored from text alone (no ID token).
    text_scored: dict[str, set[str]] = field(default_factory=dict)


def eval_rules_yaml(blend: Blend | None) -> str:
    """The gateway's rules file for an evaluation: ``EVAL_RULE_SET`` runs ``blend``."""
    return json.dumps({"version": 1, "rule_sets": {
        "default": {}, EVAL_RULE_SET: ({"blend": blend.to_dict()} if blend else {})}})


def _prepare_repo(version_dir: Path, dest: Path) -> Path:
    """A one-version model repository (hard links where possible) so Triton serves exactly it."""
    version_dir = Path(version_dir)
    model_dir = dest / version_dir.parent.name
    (model_dir / version_dir.name).mkdir(parents=True)
    shutil.copy2(version_dir.parent / "config.pbtxt", model_dir / "config.pbtxt")
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    # Engine files may sit in sub-folders (openvino_int8/).
    shutil.copytree(version_dir, model_dir / version_dir.name, copy_function=link, dirs_exist_ok=True)
    return dest


async def _load_store(url: str, data_dir: Path | None, split, upto: str, history_len: int, items=None) -> None:
    store = open_store(url, history_len=history_len)
    try:
        await load_into_store(store, data_dir, split, upto=upto, items=items, log=lambda *_: None)
    finally:
        await store.close()


@contextmanager
def served_stack(version_dir: Path, data_dir: Path | None, split, upto: str, work: Path, *,
                 rules_yaml: str | None = None, items=None, log=print):
    """Triton (serving only ``version_dir``) + a ``rerankd serve`` gateway on free ports, with
    a fresh SQLite store holding the items (``items``, else MovieLens's in ``data_dir``) and
    the interactions known before ``upto``."""
    work = Path(work)
    repo = _prepare_repo(version_dir, work / "repo")
    db = work / "store.db"
    settings = load_settings(env={})
    t0 = time.monotonic()
    asyncio.run(_load_store(f"sqlite:///{db}", data_dir, split, upto, settings.store.history_len, items))
    log(f"eval: store loaded up to {upto!r} in {time.monotonic() - t0:.0f}s")
    env = {"RERANKD_CONFIG": "", "RERANKD_STORE_URL": f"sqlite:///{db}"}
    if rules_yaml is not None:
        rules_file = work / "rules.yaml"
        rules_file.write_text(rules_yaml)
        env["RERANKD_RULES_PATH"] = str(rules_file)
    with local_stack(ensure_triton(settings.triton.install_dir), repo, work, **env) as stack:
        log(f"eval: stack up in {time.monotonic() - t0:.0f}s (gateway {stack.addr}, Triton {stack.triton.grpc_url})")
        yield stack.addr


def score_served(addr: str, lists: Sequence[EvalList], *, rule_set: str = "", concurrency: int = 4,
                 log=print) -> ServedResult:
    """Send each list as one Rerank (candidates with their retrieval scores); collect the
    model score of every candidate and the order the gateway returned."""
    t0 = time.monotonic()
    model_scores: dict[str, np.ndarray] = {}
    final: dict[str, list[str]] = {}
    versions = set()
    blended = []
    text_scored: dict[str, set[str]] = {}
    from_text = reranker_pb2.SCORED_FROM_TEXT
    with grpc.insecure_channel(addr) as ch:
        stub = reranker_pb2_grpc.RerankerStub(ch)
        pending: list[tuple[EvalList, object]] = []

        def drain(limit: int) -> None:
            while len(pending) > limit:
                el, fut = pending.pop(0)
                resp = fut.result()
                by_id = {it.item_id: it for it in resp.items}
                model_scores[el.user] = np.array([by_id[c].model_score for c in el.candidates], np.float32)
                final[el.user] = [it.item_id for it in resp.items]
                text_scored[el.user] = {it.item_id for it in resp.items if it.scored_from == from_text}
                versions.add(resp.model_version)
                blended.append(any(abs(it.score - it.model_score) > 1e-6 for it in resp.items))
                if len(final) % 100 == 0 or len(final) == len(lists):
                    log(f"eval: served {len(final)}/{len(lists)} lists ({time.monotonic() - t0:.0f}s)")

        for el in lists:
            req = reranker_pb2.RerankRequest(
                user_id=el.user, rule_set=rule_set,
                candidates=[reranker_pb2.Candidate(item_id=c, retrieval_score=r)
                            for c, r in zip(el.candidates, el.retrieval)])
            pending.append((el, stub.Rerank.future(req, timeout=120)))
            drain(concurrency - 1)
        drain(0)
    if len(versions) != 1:
        raise RuntimeError(f"the gateway answered with versions {sorted(versions)}")
    return ServedResult(model_scores, final, versions.pop(), bool(blended) and all(blended),
                        time.monotonic() - t0, text_scored)


def score_served_blended(addr: str, lists: Sequence[EvalList], log=print) -> ServedResult:
    """Ask for ``EVAL_RULE_SET``; a gateway without a rules stage (or without that set) is
    asked with the default rule set, and the caller blends from its model scores."""
    try:
        return score_served(addr, lists, rule_set=EVAL_RULE_SET, log=log)
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        log(f"eval: gateway has no {EVAL_RULE_SET!r} rule set ({exc.code().name}); blending locally")
    return score_served(addr, lists, rule_set="", log=log)
