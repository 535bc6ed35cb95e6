"""``rerankd client ...``: call a running gateway through the generated stubs."""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import grpc

DEFAULT_ADDR = "127.0.0.1:50051"
API_KEY_ENV = "RERANKD_CLIENT_API_KEY"


def add_parser(sub) -> None:
    c = sub.add_parser("client", help="call a running rerankd gateway")
    c.add_argument("--addr", default=DEFAULT_ADDR, help=f"gateway address (default {DEFAULT_ADDR})")
    c.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    c.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                   help=f"sent as 'authorization: Bearer <key>' (default ${API_KEY_ENV})")
    _add_tls_arguments(c)
    csub = c.add_subparsers(dest="client_command", required=True)

    r = csub.add_parser("rerank", help="rank items for a user")
    r.add_argument("--user", required=True)
    r.add_argument("--items", required=True, help="comma-separated candidate item ids")
    r.add_argument("--top-n", type=int, default=0)
    r.add_argument("--context", default="", help="free-text context (cold-start users)")
    r.add_argument("--rule-set", default="", help="named rule set (default: 'default')")
    r.add_argument("--override", action="append", default=[], metavar="PATH=VALUE",
                   help="rule override allowed by the rule set, e.g. blend.retrieval_weight=0.3")
    r.add_argument("--explain", action="store_true", help="show how each score came about")
    r.add_argument("--json", action="store_true", help="print the reply as JSON")

    u = csub.add_parser("upsert", help="create or replace items")
    u.add_argument("--item", action="append", default=[], metavar="ID=TITLE")
    u.add_argument("--delete", action="append", default=[], metavar="ID")

    e = csub.add_parser("events", help="record user events")
    e.add_argument("--user", required=True)
    e.add_argument("--items", required=True, help="comma-separated item ids")
    e.add_argument("--type", default="click")
    e.add_argument("--request-id", default="", help="the request id of the Rerank reply that showed the items "
                                                     "(online evaluation: `rerankd report online`)")

    b = csub.add_parser("load-items", help="bulk-load a catalog file (JSON lines or CSV) through UpsertItems")
    b.add_argument("path", help="items.jsonl ({item_id, title, text, attributes}) or items.csv "
                                "(item_id,title,text columns; any other column becomes an attribute)")
    b.add_argument("--batch", type=int, default=500, help="items per UpsertItems call")
    b.add_argument("--delete", action="store_true", help="delete the file's item ids instead")

    f = csub.add_parser("forget", help="erase a user's events, history and cached scores (scope admin)")
    f.add_argument("user", metavar="USER", help="the user id")

    h = csub.add_parser("health", help="gRPC health status")
    for p in (r, u, e, b, f, h):
        # --addr / --timeout also after the subcommand (`client rerank --addr ...`), where
        # people type them; SUPPRESS keeps the value given before the subcommand otherwise.
        p.add_argument("--addr", default=argparse.SUPPRESS, help="gateway address")
        p.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="deadline in seconds")
        p.add_argument("--api-key", default=argparse.SUPPRESS, help="API key")
        _add_tls_arguments(p, after_subcommand=True)
    for p in (r, u, e, b, f):
        p.set_defaults(func=_run)
    c.set_defaults(func=_run)


def _rerank(stub, pb, args):
    req = pb.RerankRequest(user_id=args.user, top_n=args.top_n,
                           candidates=[pb.Candidate(item_id=i.strip()) for i in args.items.split(",") if i.strip()],
                           context=pb.RequestContext(text=args.context), rule_set=args.rule_set,
                           explain=args.explain,
                           rule_overrides=dict(o.split("=", 1) for o in args.override))
    start = time.perf_counter()
    resp = stub.Rerank(req, timeout=args.timeout)
    wall_ms = (time.perf_counter() - start) * 1000
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(resp), indent=2))
        return
    print(f"model {resp.model_name} version {resp.model_version}  (request {resp.request_id}, {wall_ms:.1f} ms)")
    # "from": how the model read the item, its trained ID token or its text only (a cold item).
    source = {pb.SCORED_FROM_ID_TOKEN: "token", pb.SCORED_FROM_TEXT: "text"}
    print(f"{'rank':>4}  {'item':<16} {'score':>9}  from")
    for it in resp.items:
        flag = "  (not in catalog: unscored)" if it.unscored else ""
        print(f"{it.rank:>4}  {it.item_id:<16} {it.score:>9.4f}  {source.get(it.scored_from, '-'):<5}{flag}")
        if it.HasField("explanation"):
            e = it.explanation
            steps = " ".join(f"{a.rule} {a.delta:+.4f}" for a in e.adjustments)
            notes = "; ".join(f"{n.rule}: {n.text}" for n in e.notes)
            print(f"        model {e.model_score:.4f} {steps} = {e.final_score:.4f}" + (f"  [{notes}]" if notes else ""))
    for f in resp.filtered:
        print(f"   -  {f.item_id:<16} filtered by {f.rule}")
    print("stages: " + ", ".join(f"{t.stage} {t.ms:.1f} ms" for t in resp.timings))


def _upsert(stub, pb, args):
    items = []
    for spec in args.item:
        item_id, _, title = spec.partition("=")
        items.append(pb.Item(item_id=item_id, title=title))
    resp = stub.UpsertItems(pb.UpsertItemsRequest(items=items, delete_item_ids=args.delete), timeout=args.timeout)
    print(f"upserted {resp.upserted}, deleted {resp.deleted}")


def _events(stub, pb, args):
    now = time.time()
    events = [pb.Event(user_id=args.user, item_id=i.strip(), event_type=args.type, timestamp=now,
                       request_id=args.request_id)
              for i in args.items.split(",") if i.strip()]
    resp = stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=args.timeout)
    print(f"accepted {resp.accepted}, duplicates {resp.duplicates}")


def _forget(stub, pb, args):
    resp = stub.ForgetUser(pb.ForgetUserRequest(user_id=args.user), timeout=args.timeout)
    print(f"removed {resp.events_removed} events, {resp.cached_scores_removed} cached scores")


def read_items(path: str):
    """Items from a JSON-lines or CSV file, as dicts {item_id, title, text, attributes}."""
    import csv

    with open(path, newline="") as f:
        if path.endswith(".csv"):
            for row in csv.DictReader(f):
                attrs = {k: v for k, v in row.items() if k not in ("item_id", "title", "text") and v}
                yield {"item_id": row["item_id"], "title": row.get("title", ""), "text": row.get("text", ""),
                       "attributes": attrs}
        else:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def _pb_item(pb, d: dict):
    return pb.Item(item_id=str(d["item_id"]), title=d.get("title", ""), text=d.get("text", ""),
                   attributes={k: str(v) for k, v in (d.get("attributes") or {}).items()})


def _progress(done: int, total: int, start: float) -> None:
    rate = done / max(time.perf_counter() - start, 1e-9)
    width = 30
    filled = int(width * done / max(total, 1))
    eta = (total - done) / rate if rate else 0
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} items  {rate:,.0f}/s  ETA {eta:.0f}s",
          end="", flush=True)


def _load_items(stub, pb, args):
    rows = list(read_items(args.path))
    start, done = time.perf_counter(), 0
    for i in range(0, len(rows), args.batch):
        chunk = rows[i:i + args.batch]
        if args.delete:
            req = pb.UpsertItemsRequest(delete_item_ids=[str(d["item_id"]) for d in chunk])
        else:
            req = pb.UpsertItemsRequest(items=[_pb_item(pb, d) for d in chunk])
        stub.UpsertItems(req, timeout=args.timeout)
        done += len(chunk)
        _progress(done, len(rows), start)
    print(f"\n{'deleted' if args.delete else 'upserted'} {done} items from {args.path}")


def _health(channel, args):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _add_tls_arguments(p, after_subcommand: bool = False) -> None:
    """TLS to the gateway (``security.tls_*`` on its side): any of these turns TLS on."""
    def default(value):
        return argparse.SUPPRESS if after_subcommand else value

    p.add_argument("--tls", action="store_true", default=default(False),
                   help="TLS, verifying the gateway against the system's root CAs")
    p.add_argument("--tls-ca", default=default(""), metavar="PEM",
                   help="TLS, verifying the gateway's certificate against this CA")
    p.add_argument("--tls-cert", default=default(""), metavar="PEM",
                   help="client certificate, for a gateway that requires one (mTLS); with --tls-key")
    p.add_argument("--tls-key", default=default(""), metavar="PEM", help="the client certificate's private key")
    p.add_argument("--server-name", default=default(""),
                   help="name to verify the gateway's certificate against, if not the host in --addr")


def _channel(args) -> grpc.Channel:
    from server.api import tls

    creds = tls.client_credentials(args.tls_ca, args.tls_cert, args.tls_key, tls=args.tls)
    return tls.open_channel(args.addr, creds, server_name=args.server_name)


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <key>`` to every call."""

    def __init__(self, key: str):
        self.header = ("authorization", f"Bearer {key}")

    def _details(self, d):
        return _CallDetails(d.method, d.timeout, [*(d.metadata or ()), self.header], d.credentials,
                            d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def with_api_key(channel: grpc.Channel, key: str | None) -> grpc.Channel:
    """``channel`` sending ``key`` with every call (unchanged without one)."""
    return grpc.intercept_channel(channel, _ApiKey(key)) if key else channel


def _run(args) -> int:
    from server.api.pb import reranker_pb2 as pb
    from server.api.pb import reranker_pb2_grpc as pb_grpc

    with _channel(args) as raw:
        channel = with_api_key(raw, args.api_key)
        stub = pb_grpc.RerankerStub(channel)
        try:
            if args.client_command == "health":
                _health(channel, args)
            else:
                {"rerank": _rerank, "upsert": _upsert, "events": _events,
                 "load-items": _load_items, "forget": _forget}[args.client_command](stub, pb, args)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0
