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
from perf.common import log
from server.settings import PROJECT_ROOT


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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

    from export.base_model import load_for_export
    from export.shared_prefix import export_onnx as export_shared
    from export.to_onnx import export_onnx as export_pairwise
    from export.to_onnx import onnx_session

    manifest = Manifest.read(args.version_dir / "manifest.json")
    # The pairwise side as a pairwise version with item tokens is served (training.publish).
    spec = ModelSpec(seq_buckets=(16, 32, 64, 128, 256)) if manifest.render.get("item_tokens") else ModelSpec()
    tokenizer = PairTokenizer.from_file(args.version_dir / "tokenizer.json", spec)
    renderer = renderer_for(manifest.render, tokenizer._tok)
    requests = movielens_requests(args.requests, args.candidates, renderer=renderer)
    if requests is None:
        raise SystemExit("MovieLens is not in .cache/data: run `make data` first")
    model = load_for_export(args.hf_dir)
    with tempfile.TemporaryDirectory() as tmp:
        pair_onnx = export_pairwise(model, spec, Path(tmp) / "pairwise.onnx")
        shared_onnx = export_shared(model, Path(tmp) / "shared.onnx")
        sessions = {"pairwise": onnx_session(pair_onnx, args.threads),
                    "shared_prefix": onnx_session(shared_onnx, args.threads)}
    pair_in = [tokenizer.encode(u, items) for u, items in requests]
    shared_spec = manifest.spec if manifest.spec.scoring == "shared_prefix" else ModelSpec.shared_prefix()
    shared_tok = PrefixTokenizer.from_file(args.version_dir / "tokenizer.json", shared_spec)
    shared_in = [shared_tok.encode(u, items) for u, items in requests]
    feeds = {"pairwise": [b.arrays for b in pair_in], "shared_prefix": [b.arrays for b in shared_in]}
    pairs = sum(len(items) for _, items in requests)
    # Same ranking from both layouts is not expected (the weights were trained pairwise);
    # what must hold is that both run the same requests: one score per candidate.
    for name, sess in sessions.items():
        sess.run(None, feeds[name][0])  # warm-up
    seconds = {k: 0.0 for k in sessions}
    for r in range(args.rounds):
        for name in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
            t0 = time.perf_counter()
            for f in feeds[name]:
                sessions[name].run(None, f)
            seconds[name] += time.perf_counter() - t0
    rate = {k: pairs * args.rounds / s for k, s in seconds.items()}
    tokens = {"pairwise": float(np.mean([b.arrays["input_ids"].size for b in pair_in])),
              "shared_prefix": float(np.mean([b.input_ids.size for b in shared_in]))}
    result = {"cpu": cpu_model(), "python": platform.python_version(), "engine": "onnxruntime fp32",
              "threads": args.threads, "candidates": args.candidates, "requests": args.requests,
              "rounds": args.rounds, "pairs_per_s": rate, "ratio": rate["shared_prefix"] / rate["pairwise"],
              "tokens_per_request": tokens, "hf_dir": str(args.hf_dir), "version_dir": str(args.version_dir)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_prefix_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"==> {args.candidates} candidates, ONNX Runtime fp32, {args.threads} threads ({result['cpu']}): "
        f"pairwise {rate['pairwise']:.0f} pairs/s ({tokens['pairwise']:.0f} tokens/request), shared prefix "
        f"{rate['shared_prefix']:.0f} pairs/s ({tokens['shared_prefix']:.0f} tokens/request): "
        f"{result['ratio']:.1f}x; wrote {args.out / 'shared_prefix_bench.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
