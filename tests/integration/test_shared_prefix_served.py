"""A shared-prefix version served end to end: ``run_export(..., scoring="shared_prefix")`` of a
tiny random BERT, loaded by the real Triton (Python backend, ``PrefixScorer``), reranked
through the real gateway (``PrefixTokenizer``, ``TritonScorer`` reading each candidate's score
at its first token). The gateway runs without its score cache, so every score below comes
from Triton."""

from __future__ import annotations

import concurrent.futures as cf
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from contract.items import Item
from contract.model_spec import SHARED_PREFIX, Manifest
from contract.render import render_item, render_user
from contract.shared_prefix import PrefixTokenizer
from server.api.pb import reranker_pb2 as pb
from server.api.pb import reranker_pb2_grpc as pb_grpc
from server.devstack import local_stack
from tests.integration.conftest import (
    BACKEND_SRC,
    MAX_CANDIDATES,
    inference_counts,
    queue_delay,
    triton_install,
)

pytestmark = pytest.mark.integration

# Same engine on the same tokens, but rows laid out (and batched by Triton) differently:
# float summation order differs (~1e-8 here), nothing else may. Tighter than the usual 1e-4:
# this tiny random model's scores spread ~1e-2 in a request, and letting a request's
# candidates see each other would move them by only ~2e-4.
TOL = 1e-5
CONTEXT = "a quiet evening, something with a good story"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """(stack, stub, version folder) of a shared-prefix version served alone."""
    from export.build import run_export

    install = triton_install()
    repo = tmp_path_factory.mktemp("shared_prefix_repo")
    version, _ = run_export(tiny_model_dir, repo, scoring=SHARED_PREFIX, backend_src=BACKEND_SRC,
                            log=lambda *_: None)
    vdir = repo / "reranker" / str(version)
    logs = tmp_path_factory.mktemp("shared_prefix_logs")
    with local_stack(install, repo, logs, RERANKD_SERVER_MAX_CANDIDATES=MAX_CANDIDATES,
                     RERANKD_SERVER_SCORE_CACHE_SIZE="0",
                     RERANKD_STORE_URL=f"sqlite:///{logs / 'store.db'}") as stack, \
            grpc.insecure_channel(stack.addr) as ch:
        yield stack, pb_grpc.RerankerStub(ch), vdir


def texts(n: int, words: int = 2, start: int = 0) -> list[str]:
    vocab = ["drama", "comedy", "space", "crime", "family", "war", "romance", "noir", "western", "heist"]
    # Each text opens with its own words: a candidate's score is read at its first token.
    return [f"{vocab[i % len(vocab)]} {i} film " + " ".join(vocab[(i * 7 + k) % len(vocab)]
                                                           for k in range(words + i % 3))
            for i in range(start, start + n)]


def rerank(stub, item_texts: list[str], user: str = "nobody", ids: list[str] | None = None) -> dict[str, float]:
    ids = ids or [f"c{i}" for i in range(len(item_texts))]
    resp = stub.Rerank(pb.RerankRequest(
        user_id=user, context=pb.RequestContext(text=CONTEXT),
        candidates=[pb.Candidate(item_id=i, text=t) for i, t in zip(ids, item_texts)]), timeout=30)
    assert len(resp.items) == len(ids) and not any(it.unscored for it in resp.items)
    return {it.item_id: it.model_score for it in resp.items}


def counts_once(client, done, timeout_s: float = 10.0) -> tuple[int, int]:
    """``inference_counts`` once the rows inferred satisfy ``done`` (or the timeout passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows, runs = inference_counts(client)
        if done(rows) or time.monotonic() > deadline:
            return rows, runs
        time.sleep(0.05)


def test_the_gateway_serves_the_shared_prefix_version(served):
    stack, stub, vdir = served
    assert Manifest.read(vdir / "manifest.json").spec.scoring == SHARED_PREFIX
    item_texts = texts(20)
    got = rerank(stub, item_texts)
    # The same candidates straight through ONNX Runtime, laid out by the version's tokenizer.
    spec = Manifest.read(vdir / "manifest.json").spec
    tok = PrefixTokenizer.from_file(vdir / "tokenizer.json", spec)
    batch = tok.encode(render_user([], CONTEXT), [render_item(Item(f"c{i}", t)) for i, t in enumerate(item_texts)])
    sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = batch.scores(sess.run(["score"], batch.arrays)[0])
    np.testing.assert_allclose([got[f"c{i}"] for i in range(20)], expected, atol=TOL)
    assert np.ptp(expected) > 10 * TOL  # the candidates do get different scores


def test_a_candidate_scores_the_same_alone_or_among_99_others(served):
    _, stub, _ = served
    item_texts = texts(100)
    together = rerank(stub, item_texts)
    alone = {f"c{i}": rerank(stub, [t], ids=[f"c{i}"])[f"c{i}"] for i, t in enumerate(item_texts)}
    diff = max(abs(alone[k] - together[k]) for k in together)
    assert diff <= TOL, diff


def test_a_request_over_many_rows_and_triton_calls_scores_like_small_requests(served):
    _, stub, vdir = served
    item_texts = texts(int(MAX_CANDIDATES), words=30)
    spec = Manifest.read(vdir / "manifest.json").spec
    rows = len(PrefixTokenizer.from_file(vdir / "tokenizer.json", spec).encode(
        render_user([], CONTEXT), item_texts))
    assert rows > spec.max_batch_size  # several rows, and more than one Triton call
    big = rerank(stub, item_texts)
    small: dict[str, float] = {}
    for s in range(0, len(item_texts), 25):
        small.update(rerank(stub, item_texts[s:s + 25], ids=[f"c{i}" for i in range(s, s + 25)]))
    diff = max(abs(big[k] - small[k]) for k in big)
    assert diff <= TOL, diff


def test_concurrent_callers_of_different_widths_batched_by_triton_keep_their_scores(served):
    stack, stub, vdir = served
    # Rows from 32 to 512 tokens wide, the last request two rows. Triton's batcher joins only
    # requests of one shape, so three requests share the narrowest width: they can (and, sent
    # at once into a 300 ms window, do) share an execution.
    sizes = [1, 3, 3, 3, 8, 20, 45, 90]
    requests = [texts(n, start=100 * k) for k, n in enumerate(sizes)]
    tok = PrefixTokenizer.from_file(vdir / "tokenizer.json", Manifest.read(vdir / "manifest.json").spec)
    batches = [tok.encode(render_user([], CONTEXT), r) for r in requests]
    assert len({b.seq_len for b in batches}) >= 4
    assert len({b.seq_len for b in batches[1:4]}) == 1
    alone = [rerank(stub, r) for r in requests]
    # A 300 ms batching window: the six requests, sent at once, are joined by Triton's
    # dynamic batcher into fewer executions, so the backend pads and splits them.
    with queue_delay(stack.triton, 300_000) as client:
        rerank(stub, requests[0])  # served by the reloaded instance: the old one (and its statistics) is gone
        # Triton updates its statistics just after it answers: wait for each count to land.
        rows0, runs0 = counts_once(client, lambda rows: rows >= len(batches[0]))
        with cf.ThreadPoolExecutor(len(requests)) as pool:
            joined = list(pool.map(lambda r: rerank(stub, r), requests))
        expected_rows = rows0 + sum(len(b) for b in batches)
        rows1, runs1 = counts_once(client, lambda rows: rows >= expected_rows)
    assert rows1 == expected_rows
    assert runs1 - runs0 < len(requests)  # some of them shared an execution
    for a, j in zip(alone, joined):
        assert max(abs(a[k] - j[k]) for k in a) <= TOL
