"""In-process engine throughput: pairwise scoring vs one shared-prefix sequence per request.

Same weights, same engine (ONNX Runtime, fp32), same thread count, the same MovieLens
requests rendered by a version's own renderer and tokenizer; the two layouts alternate in
rounds so both see the same machine load. Pairwise pads each request's pairs to the spec's
sequence bucket (as the gateway does); shared prefix lays a request out with
``contract.shared_prefix.pack``. Reports pairs/s of each and their ratio.

    python -m perf.shared_prefix_bench --hf-dir var/train/final --version-dir model_repository/reranker/1
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from contract.model_spec import Manifest, ModelSpec
from contract.shared_prefix import PrefixTokenizer
from contract.tokenize import PairTokenizer
from export.engines import movielens_requests, renderer_for
from perf.common import cpu_model, log
from server.settings import PROJECT_ROOT


def measure(hf_dir: Path, version_dir: Path, *, candidates: int = 100, requests: int = 20, rounds: int = 4,
            threads: int = 2) -> dict:
    """Pairs/s of both layouts on the same weights, engine and requests; see the module doc."""
    from export.base_model import load_for_export
    from export.shared_prefix import export_onnx as export_shared
    from export.to_onnx import export_onnx as export_pairwise
    from export.to_onnx import onnx_session

    manifest = Manifest.read(version_dir / "manifest.json")
    # The pairwise side as a pairwise version with item tokens is served (training.publish).
    spec = ModelSpec(seq_buckets=(16, 32, 64, 128, 256)) if manifest.render.get("item_tokens") else ModelSpec()
    tokenizer = PairTokenizer.from_file(version_dir / "tokenizer.json", spec)
    renderer = renderer_for(manifest.render, tokenizer._tok)
    reqs = movielens_requests(requests, candidates, renderer=renderer)
    if reqs is None:
        raise FileNotFoundError("MovieLens is not in .cache/data: run `make data` first")
    model = load_for_export(hf_dir)
    with tempfile.TemporaryDirectory() as tmp:
        pair_onnx = export_pairwise(model, spec, Path(tmp) / "pairwise.onnx")
        shared_onnx = export_shared(model, Path(tmp) / "shared.onnx")
        sessions = {"pairwise": onnx_session(pair_onnx, threads),
                    "shared_prefix": onnx_session(shared_onnx, threads)}
    shared_spec = manifest.spec if manifest.spec.scoring == "shared_prefix" else ModelSpec.shared_prefix()
    shared_tok = PrefixTokenizer.from_file(version_dir / "tokenizer.json", shared_spec)
    pair_in = [tokenizer.encode(u, items) for u, items in reqs]
    shared_in = [shared_tok.encode(u, items) for u, items in reqs]
    feeds = {"pairwise": [b.arrays for b in pair_in], "shared_prefix": [b.arrays for b in shared_in]}
    pairs = sum(len(items) for _, items in reqs)
    for name, sess in sessions.items():
        sess.run(None, feeds[name][0])  # warm-up
    seconds = {k: 0.0 for k in sessions}
    for r in range(rounds):
        for name in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
            t0 = time.perf_counter()
            for f in feeds[name]:
                sessions[name].run(None, f)
            seconds[name] += time.perf_counter() - t0
    rate = {k: pairs * rounds / s for k, s in seconds.items()}
    tokens = {"pairwise": float(np.mean([b.arrays["input_ids"].size for b in pair_in])),
              "shared_prefix": float(np.mean([b.input_ids.size for b in shared_in]))}
    return {"cpu": cpu_model(), "python": platform.python_version(), "engine": "onnxruntime fp32",
            "threads": threads, "candidates": candidates, "requests": requests, "rounds": rounds,
            "pairs_per_s": rate, "ratio": rate["shared_prefix"] / rate["pairwise"],
            "tokens_per_request": tokens, "hf_dir": str(hf_dir), "version_dir": str(version_dir)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-dir", type=Path, required=True, help="fine-tuned HF model folder (weights)")
    ap.add_argument("--version-dir", type=Path, required=True, help="model version (renderer + tokenizer)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "perf-shared-prefix")
    args = ap.parse_args(argv)
    try:
        result = measure(args.hf_dir, args.version_dir, candidates=args.candidates, requests=args.requests,
                         rounds=args.rounds, threads=args.threads)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    rate, tokens = result["pairs_per_s"], result["tokens_per_request"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_prefix_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"==> {args.candidates} candidates, ONNX Runtime fp32, {args.threads} threads ({result['cpu']}): "
        f"pairwise {rate['pairwise']:.0f} pairs/s ({tokens['pairwise']:.0f} tokens/request), shared prefix "
        f"{rate['shared_prefix']:.0f} pairs/s ({tokens['shared_prefix']:.0f} tokens/request): "
        f"{result['ratio']:.1f}x; wrote {args.out / 'shared_prefix_bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
