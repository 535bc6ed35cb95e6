"""``rerankd`` command line: serve, triton, export, data, train, eval, client, keys, model, report.

Settings are parsed here once (file + environment + flags) and passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from server.errors import RerankdError
from server.settings import Settings, load_settings


def _settings(args) -> Settings:
    return load_settings(args.config, overrides={
        "server.port": getattr(args, "port", None),
        "server.host": getattr(args, "host", None),
        "triton.url": getattr(args, "triton_url", None),
        "triton.model_repository": getattr(args, "model_repository", None),
        "store.url": getattr(args, "store", None),
    })


def _progress_wait(what: str, ready, timeout_s: float, failed=None) -> None:
    """Wait for ``ready()`` printing elapsed seconds on one line (slow steps show progress)."""
    start = time.monotonic()
    while not ready():
        if failed is not None:
            failed()
        elapsed = time.monotonic() - start
        if elapsed > timeout_s:
            raise TimeoutError(f"{what}: not ready after {timeout_s:.0f}s")
        print(f"\r==> {what} ... {elapsed:4.0f}s", end="", flush=True)
        time.sleep(0.5)
    print(f"\r==> {what} ... ready in {time.monotonic() - start:.1f}s")


def start_triton(settings: Settings, *, free_ports: bool, load: bool):
    """Install (if needed) and start the local Triton server for ``settings``."""
    from server.triton.install import ensure_triton
    from server.triton.launcher import TritonPorts, TritonServer

    t = settings.triton
    install = ensure_triton(t.install_dir)
    ports = TritonPorts.free() if free_ports else TritonPorts(t.http_port, t.grpc_port, t.metrics_port)
    log_path = t.log_dir / f"triton-{ports.grpc}.log"
    server = TritonServer(install, t.model_repository, ports=ports, log_path=log_path,
                          load_models=[t.model_name] if load else [])
    try:
        server.start()
    except RuntimeError as exc:  # a port in use: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    def failed():
        if server.exited():
            raise RuntimeError(f"tritonserver exited with code {server.reap()}; see {log_path}")

    try:
        print(f"==> Triton starting (gRPC {server.grpc_url}, HTTP {server.http_url}); log: {log_path}")
        _progress_wait(f"loading model {t.model_name!r} in Triton" if load else "starting Triton",
                       lambda: server.is_live() and (not load or server.model_ready(t.model_name)),
                       timeout_s=300, failed=failed)
    except BaseException:  # Ctrl-C or a failed load: never leave an orphaned tritonserver
        _ignore_stop_signals()
        server.stop()
        raise
    settings.triton.url = server.grpc_url
    return server


def _launcher_signals() -> None:
    """For the commands that start Triton: SIGTERM (systemd, Kubernetes) and SIGINT stop them
    as Ctrl-C does, and orphaned Triton backend stubs are re-parented to this process, which
    reaps them. SIGINT explicitly: a process started in the background by a non-interactive
    shell (`cmd &` in a script, nohup) inherits SIGINT ignored, and Python then installs no
    Ctrl-C handler of its own, so SIGINT would never stop Triton."""
    from server.triton.launcher import become_subreaper

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    become_subreaper()


def _ignore_stop_signals() -> None:
    """While stopping Triton (bounded in time): a second signal must not leave it half-stopped."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _supervisor(server, settings: Settings):
    """Reaps Triton's stubs if it dies and, with ``triton.restart_on_exit``, restarts it."""
    from server.triton.launcher import TritonSupervisor

    t = settings.triton
    return TritonSupervisor(server, restart=t.restart_on_exit, backoff_s=t.restart_backoff_s,
                            backoff_max_s=t.restart_backoff_max_s)


def cmd_triton(args) -> int:
    settings = _settings(args)
    if args.install_only:
        from server.triton.install import ensure_triton

        ensure_triton(settings.triton.install_dir)
        return 0
    _launcher_signals()
    supervisor = None
    try:
        server = start_triton(settings, free_ports=args.free_ports, load=not args.no_load)
        supervisor = _supervisor(server, settings)
        supervisor.start()
        print("==> Triton running; Ctrl-C or SIGTERM stops it", flush=True)
        while supervisor.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _ignore_stop_signals()
        if supervisor is not None:
            print("==> stopping Triton", flush=True)
            supervisor.stop()
    if supervisor is not None and supervisor.gave_up:
        print("error: tritonserver exited (triton.restart_on_exit is off)", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args) -> int:
    settings = _settings(args)
    if args.workers is not None:
        settings.server.workers = args.workers
    if settings.server.workers < 1:
        print(f"error: workers must be at least 1, not {settings.server.workers}", file=sys.stderr)
        return 2
    from server.api import tls

    # TLS files checked here as well: before Triton starts, and once for all worker processes.
    tls.server_credentials(settings.security)
    tls.triton_credentials(settings.triton)
    supervisor = None
    try:
        if args.with_triton:
            _launcher_signals()
            supervisor = _supervisor(start_triton(settings, free_ports=False, load=True), settings)
            supervisor.start()
        if settings.server.workers > 1:
            return _serve_workers(settings)
        asyncio.run(_serve(settings))
    except KeyboardInterrupt:  # a signal before the gateway took over SIGINT/SIGTERM
        if not args.with_triton:
            raise
    finally:
        if supervisor is not None:
            _ignore_stop_signals()
            print("==> stopping Triton", flush=True)
            supervisor.stop()
    return 0


def _serve_workers(settings: Settings) -> int:
    """``server.workers`` gateway processes on one port (SO_REUSEPORT, which gRPC sets on
    Linux: the kernel spreads new connections over them). Each has its own store connection,
    Triton channel and caches; worker i serves metrics on ``metrics_port + i``. SIGINT and
    SIGTERM stop them all (each drains its in-flight requests); if one dies, the rest stop."""
    import dataclasses
    import multiprocessing

    from server.triton.launcher import free_port

    n = settings.server.workers
    if settings.server.port == 0:  # one port for all: choose it here
        settings.server.port = free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(n):
        tel = settings.telemetry
        worker = dataclasses.replace(settings, telemetry=dataclasses.replace(
            tel, metrics_port=tel.metrics_port + i if tel.metrics_port > 0 else tel.metrics_port))
        procs.append(ctx.Process(target=_worker, args=(worker, i, n), name=f"rerankd-worker-{i}"))
    for p in procs:
        p.start()
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker drains, then exits

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.is_alive() for p in procs):
            if not stopping and any(p.exitcode not in (None, 0) for p in procs):
                print("error: a gateway worker exited; stopping the others", file=sys.stderr)
                stop()
            time.sleep(0.2)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for p in procs:
            p.join(15)
    return 0 if stopping or all(p.exitcode == 0 for p in procs) else 1


def _worker(settings: Settings, index: int, count: int) -> None:
    logging.basicConfig(level="INFO", format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    asyncio.run(_serve(settings, banner=index == 0, workers=count))


async def _serve(settings: Settings, *, banner: bool = True, workers: int = 1) -> None:
    from server.api.app import Gateway

    gateway = Gateway(settings)
    port = await gateway.start()
    served = gateway.models.current
    if banner:
        print(f"==> rerankd listening on {settings.server.host}:{port}"
              + (f" ({workers} gateway processes)" if workers > 1 else "") + "; model "
              f"{served.name + ' v' + served.version if served else '(none ready yet)'}; store {settings.store.url}")
        sec = settings.security
        tls_flags = ((" --tls-ca CA.pem" if sec.tls_cert else "")
                     + (" --tls-cert CLIENT.pem --tls-key CLIENT.key" if sec.tls_client_ca else ""))
        print("    try, in another terminal:\n"
              f"      .venv/bin/rerankd client rerank --addr {settings.server.host}:{port}{tls_flags}"
              " --user 1 --items 50,172,181,1,121\n"
              "    Ctrl-C stops the gateway and Triton.")
    if gateway.metrics_port:
        print(f"    metrics (Prometheus text): curl http://{settings.telemetry.metrics_host}:{gateway.metrics_port}/metrics")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("\n==> stopping gateway (draining in-flight requests)")
    await gateway.stop()


def cmd_export(args) -> int:
    settings = _settings(args)
    from export.build import has_version, run_export

    repo = settings.triton.model_repository
    if args.if_missing and has_version(repo, settings.triton.model_name):
        print(f"==> model repository {repo} already has a {settings.triton.model_name} version")
        return 0
    source = Path(args.source) if args.source else None
    backend_src = Path(__file__).resolve().parent.parent / "model_repository" / "reranker" / "model.py"
    version, diff = run_export(source, repo, backend_src=backend_src, engine=args.engine)
    print(f"==> exported {settings.triton.model_name} version {version} (ONNX vs torch max abs diff {diff:.2e})")
    return 0


def cmd_data(args) -> int:
    """Fetch MovieLens-100K (checksummed) and load items + ratings into the feature store."""
    settings = _settings(args)
    from interactions.movielens import fetch_movielens, leave_one_out, load_interactions
    from interactions.to_store import load_into_store
    from server.features import open_store

    folder = fetch_movielens()
    split = leave_one_out(load_interactions(folder))

    async def load():
        store = open_store(settings.store.url, history_len=settings.store.history_len)
        try:
            if args.if_empty and (await store.get_items(["1"])):
                print(f"==> store {settings.store.url} already holds MovieLens items")
                return
            await load_into_store(store, folder, split, upto=args.upto)
        finally:
            await store.close()

    asyncio.run(load())
    return 0


def cmd_train(args) -> int:
    """Fine-tune the reranker on MovieLens-100K and export it as the next model version."""
    settings = _settings(args)
    from cli import train

    return train.run(args, settings)


def cmd_eval(args) -> int:
    """Evaluate a model version through the served path and in-process; write reports/."""
    settings = _settings(args)
    from cli import evaluate

    return evaluate.run(args, settings)


def cmd_report(args) -> int:
    """``rerankd report online``: events joined to the rankings that showed them, per version."""
    settings = _settings(args)
    from cli import report

    return report.run(args, settings)


def build_parser() -> argparse.ArgumentParser:
    from export.engines import ENGINES

    p = argparse.ArgumentParser(prog="rerankd", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="TOML settings file (also RERANKD_CONFIG)")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC gateway")
    s.add_argument("--with-triton", action="store_true", help="also start the local Triton server")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--triton-url")
    s.add_argument("--store", help="sqlite:///relative.db, sqlite:////absolute.db or redis://host:port/db")
    s.add_argument("--model-repository")
    s.add_argument("--workers", type=int, help="gateway processes on the one port (default 1; "
                   "RERANKD_SERVER_WORKERS)")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("triton", help="install and run the local Triton server")
    t.add_argument("--install-only", action="store_true")
    t.add_argument("--free-ports", action="store_true", help="pick free ports instead of the configured ones")
    t.add_argument("--no-load", action="store_true", help="start without loading the model")
    t.add_argument("--model-repository")
    t.set_defaults(func=cmd_triton)

    e = sub.add_parser("export", help="export a Hugging Face cross-encoder as the next model version")
    e.add_argument("--from", dest="source", help="HF model folder (default: packaged MiniLM-L6)")
    e.add_argument("--if-missing", action="store_true", help="do nothing if a version exists")
    e.add_argument("--engine", default="onnxruntime",
                   choices=ENGINES,
                   help="CPU engine in Triton's Python backend (openvino* need `pip install -e .[perf]`); "
                        "checked against fp32 before the version is written")
    e.add_argument("--model-repository")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="load a data set into the feature store")
    d.add_argument("dataset", choices=["movielens"])
    d.add_argument("--upto", choices=["valid", "test", "all"], default="all",
                   help="which part of each user's history to load (leave-one-out split)")
    d.add_argument("--if-empty", action="store_true", help="do nothing if the store has the items")
    d.add_argument("--store", help="sqlite:///relative.db, sqlite:////absolute.db or redis://host:port/db")
    d.set_defaults(func=cmd_data)

    from cli import evaluate as eval_cmd
    from cli import train as train_cmd

    tr = sub.add_parser("train", help="fine-tune the reranker (MovieLens-100K, the store's logs or files), "
                        "export the next version, compare it with the serving one")
    train_cmd.add_arguments(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a model version (served path and in-process), write reports/")
    eval_cmd.add_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    from cli import client
    from cli import keys as keys_cmd
    from cli import model as model_cmd

    client.add_parser(sub)
    keys_cmd.add_parser(sub)
    model_cmd.add_parser(sub)
    from cli import report as report_cmd

    report_cmd.add_parser(sub, cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except RerankdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and friends
        return 0


if __name__ == "__main__":
    sys.exit(main())
