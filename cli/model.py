"""``rerankd model list|load|promote|rollback|canary|unload``: roll out model versions on a
running Triton (``server.triton.rollout``); gateways follow ``rollout.json`` on their own."""

from __future__ import annotations

import json

from server.settings import Settings, load_settings


def add_parser(sub) -> None:
    m = sub.add_parser("model", help="roll out model versions: list, load, canary, promote, rollback, unload")
    msub = m.add_subparsers(dest="model_command", required=True)
    ls = msub.add_parser("list", help="versions on disk, their state in Triton, the roll-out state")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ld = msub.add_parser("load", help="load and warm a version in Triton (traffic does not move)")
    ld.add_argument("version")
    pr = msub.add_parser("promote", help="warm a version, serve it to everyone, unload the old one")
    pr.add_argument("version")
    msub.add_parser("rollback", help="stop the canary, or serve the previous version again")
    ca = msub.add_parser("canary", help="serve a version to a share of users (sticky by user id)")
    ca.add_argument("version")
    ca.add_argument("--share", type=float, required=True, help="share of users, e.g. 0.1")
    un = msub.add_parser("unload", help="unload a version from Triton (never the serving one)")
    un.add_argument("version")
    for p in (ls, ld, pr, ca, un, msub.choices["rollback"]):
        p.add_argument("--triton-url", help="Triton's gRPC address (default triton.url)")
        p.add_argument("--model-repository", help="default triton.model_repository")
    m.set_defaults(func=lambda args: run(args, load_settings(args.config, overrides={
        "triton.url": args.triton_url, "triton.model_repository": args.model_repository})))


def controller(settings: Settings):
    from server.api.tls import triton_credentials
    from server.triton.rollout import Rollout

    t = settings.triton
    return Rollout(t.url, t.model_repository, t.model_name, poll_interval_s=t.poll_interval_s,
                   settle_s=t.rollout_settle_s, credentials=triton_credentials(t))


def run(args, settings: Settings) -> int:
    rollout = controller(settings)
    try:
        cmd = args.model_command
        if cmd == "list":
            return _list(rollout, as_json=args.json)
        if cmd == "load":
            rollout.load(args.version)
        elif cmd == "canary":
            rollout.canary(args.version, args.share)
        elif cmd == "promote":
            rollout.promote(args.version)
        elif cmd == "rollback":
            rollout.rollback()
        elif cmd == "unload":
            rollout.unload(args.version)
        return 0
    finally:
        rollout.close()


def _list(rollout, *, as_json: bool) -> int:
    state = rollout.state()
    infos = rollout.info()
    if as_json:
        print(json.dumps({"model": rollout.name, "rollout": json.loads(state.to_json()) if state else None,
                          "versions": [vars(i) for i in infos]}, indent=2))
        return 0
    if state is None:
        ready = [i.version for i in infos if i.triton_state == "READY"]
        unreachable = any(i.triton_state == "unreachable" for i in infos)
        print(f"model {rollout.name}: no rollout.json; gateways serve the newest READY version "
              f"({'Triton unreachable' if unreachable else ready[-1] if ready else 'none'})")
    else:
        canary = f", candidate {state.candidate} for {state.share:.1%} of users" if state.candidate else ""
        prev = f", previous {', '.join(state.previous)}" if state.previous else ""
        print(f"model {rollout.name}: serving {state.serving}{canary}{prev} (updated {state.updated_at})")
    print(f"{'version':>7}  {'role':<9}  {'triton':<11}  {'scoring':<13}  {'engine':<16}  figures")
    for i in infos:
        role = ("serving" if state and i.version == state.serving else
                "candidate" if state and i.version == state.candidate else
                "previous" if state and i.version in state.previous else "")
        figures = ", ".join(f"{_short(k)} {v:.4g}" for k, v in sorted(i.figures.items())[:4]) or i.error or "-"
        print(f"{i.version:>7}  {role:<9}  {i.triton_state or '-':<11}  {i.scoring:<13}  {i.engine:<16}  {figures}")
    return 0


def _short(key: str) -> str:
    """``validation.blend.metrics.ndcg@10`` -> ``blend ndcg@10`` (validation figures)."""
    return key.removeprefix("validation.").replace(".metrics", "").replace(".", " ")
