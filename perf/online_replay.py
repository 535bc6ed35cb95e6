"""``rerankd report online`` on a replay: MovieLens test interactions sent as clicks, with the
reply's request id, against two gateways sharing one store loaded up to the test split
(``evaluation.served.served_stack``): one serving a model version, one whose Triton cannot be
reached, so every reply is degraded, i.e. the retriever's order (``retrieval_score``) as the
other arm. Users alternate between the two; each sends the retriever's candidates (ItemKNN
top-50, the test item put last when missing) and clicks the test item.

    python -m perf.online_replay --model-version 1 --users 400
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from perf.common import cpu_pressure, log
from server.settings import PROJECT_ROOT


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-version", required=True, help="version folder of model_repository/reranker to serve")
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "online-replay")
    args = ap.parse_args(argv)

    import grpc

    from evaluation.online import online_report, write_online_report
    from evaluation.protocol import build_lists, movielens_inputs
    from evaluation.served import served_stack
    from server.api.pb import reranker_pb2 as pb
    from server.api.pb import reranker_pb2_grpc as pb_grpc
    from server.devstack import gateway_process
    from server.features.sqlite import SqliteStore
    from server.triton.launcher import free_port

    out = args.out.resolve()
    work = out / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    folder, split, items = movielens_inputs()
    users = [u for u in split.users if u in split.test][:args.users]
    lists, _ = build_lists(split, [i.item_id for i in items], "test", users=users)
    for el in lists:
        if not el.covered:
            el.candidates[-1] = el.target
    version_dir = PROJECT_ROOT / "model_repository" / "reranker" / args.model_version
    db = work / "store.db"
    with served_stack(version_dir, folder, split, "test", work, log=log) as model_addr, \
            gateway_process(f"127.0.0.1:{free_port()}", work / "repo", work / "degraded.log", serving=False,
                            RERANKD_STORE_URL=f"sqlite:///{db}", RERANKD_SERVER_MAX_CANDIDATES="1000") as (_, fb_addr):
        log(f"==> replaying {len(lists)} users: model {model_addr}, retriever order (degraded) {fb_addr}; "
            f"CPU pressure {cpu_pressure()}")
        for n, el in enumerate(lists):
            addr = model_addr if n % 2 == 0 else fb_addr
            with grpc.insecure_channel(addr) as ch:
                stub = pb_grpc.RerankerStub(ch)
                resp = stub.Rerank(pb.RerankRequest(user_id=el.user, candidates=[
                    pb.Candidate(item_id=c, retrieval_score=r) for c, r in zip(el.candidates, el.retrieval)]),
                    timeout=60)
                stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(
                    user_id=el.user, item_id=el.target, event_type="click", timestamp=time.time(),
                    request_id=resp.request_id)]), timeout=30)

    async def read():
        store = SqliteStore(db)
        try:
            return await store.export_impressions(), await store.export_attributed_events()
        finally:
            await store.close()

    import asyncio

    impressions, events = asyncio.run(read())
    rep = online_report(impressions, events, k=args.k)
    paths = write_online_report(rep, out)
    log(paths[1].read_text().split("\n## Definitions", 1)[0])
    log("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
