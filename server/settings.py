"""One typed settings object: defaults < TOML file < ``RERANKD_*`` environment < CLI flags.

Parsed once in ``cli.main`` and passed down; nothing below reads the environment.
Environment names are ``RERANKD_<SECTION>_<FIELD>`` (for example ``RERANKD_TRITON_URL``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import InvalidArgument

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    # Admission control: requests in flight beyond this fail fast with RESOURCE_EXHAUSTED.
    max_in_flight: int = 256
    # Load shedding: a request expected (from recent service times and the work ahead of it)
    # to take over shed_headroom x the time left to its deadline is refused at once with
    # RESOURCE_EXHAUSTED instead of queueing (no caller deadline: default_timeout_s).
    load_shedding: bool = True
    shed_headroom: float = 0.9
    max_candidates: int = 1000
    max_events_per_call: int = 1000
    max_items_per_call: int = 1000
    # Scores kept per (model version, user text, item text); 0 disables the cache.
    score_cache_size: int = 200_000
    # Deadline applied when the caller sets none (seconds).
    default_timeout_s: float = 10.0
    # Gateway processes on the one port (the kernel spreads connections, SO_REUSEPORT): one
    # Python process tops out near a few hundred requests a second of 100 candidates.
    workers: int = 1
    # Full garbage collections run when no request is in flight, at most this often, or
    # anyway after gc_max_delay_s (see server.api.collector); 0 keeps Python's own schedule.
    gc_idle_every_s: float = 30.0
    gc_max_delay_s: float = 120.0
    # Collections that also rescan the objects frozen by earlier ones (see server.api.collector).
    gc_deep_every_s: float = 900.0
    # Connections are closed (GOAWAY, after max_connection_age_grace_s for calls in flight)
    # after this many seconds, so clients balancing over DNS (a headless Kubernetes Service,
    # round_robin) re-resolve and find new replicas; 0: connections live on.
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 10.0


@dataclass
class TritonSettings:
    # One Triton, or a comma-separated list ("a:8001,b:8001"): calls go to the least busy
    # endpoint that is up, dead ones are skipped and probed back (server.triton.pool).
    url: str = "127.0.0.1:8001"
    model_name: str = "reranker"
    # Empty: the newest version Triton reports ready.
    model_version: str = ""
    model_repository: Path = PROJECT_ROOT / "model_repository"
    # Where the Triton binary is unpacked (see server.triton.install).
    install_dir: Path = PROJECT_ROOT / ".cache" / "triton"
    log_dir: Path = PROJECT_ROOT / "var" / "log"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # How often the gateway checks model readiness / new versions (seconds).
    poll_interval_s: float = 1.0
    # Canary routing (``rerankd model canary``): a user's bucket is SHA-256 of this salt and
    # the user id; every gateway must use the same salt. A new salt reshuffles the users.
    canary_salt: str = "rerankd-canary"
    # `rerankd model` commands: after switching versions, wait 2 poll intervals plus this
    # long (requests sent to the old version finish) before unloading it.
    rollout_settle_s: float = 2.0
    # `rerankd triton` / `serve --with-triton`: when tritonserver exits unexpectedly, start it
    # again on the same ports (after killing its backend stubs), with capped backoff.
    restart_on_exit: bool = True
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    # TLS on the gateway's channel to Triton (a remote Triton started with --grpc-use-ssl):
    # on when ``tls`` is true or any tls_* file is set. ``tls_ca`` (PEM) verifies Triton's
    # certificate (empty: the system roots); ``tls_cert`` + ``tls_key`` are the gateway's
    # client certificate, for a Triton with --grpc-use-ssl-mutual.
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass
class StoreSettings:
    # sqlite:///relative/file.db, sqlite:////absolute/file.db or redis://host:port/db
    # (Redis Cluster: redis://node:port/0?cluster=true)
    url: str = f"sqlite:///{PROJECT_ROOT / 'var' / 'rerankd.db'}"
    # Most recent interactions kept per user (and rendered into the user text).
    history_len: int = 20
    item_cache_size: int = 100_000
    # Bounds how stale an item can be on a gateway that did not receive its upsert (several
    # gateways sharing a store): with Redis only when an invalidation message is lost
    # (server.features.invalidation); 0 disables expiry.
    item_cache_ttl_s: float = 30.0


@dataclass
class ModelSettings:
    # How many recent items the text renderer puts on the user side.
    history_in_text: int = 10
    # Per-event-type weights, "type=weight,..." (e.g. "view=0,click=1"): a type with
    # weight 0 is left out of the user's history; unlisted types weigh 1.
    event_weights: str = ""


@dataclass
class RulesSettings:
    # YAML rules file (see server/rules/example_rules.yaml); empty: no rules, model order.
    path: str = ""
    # How often the file is checked for changes (seconds).
    reload_interval_s: float = 1.0


@dataclass
class TelemetrySettings:
    # Trace exporter: "none" or "console" (JSON spans on stdout). Spans join the caller's
    # W3C traceparent and the context goes on to Triton in the inference headers.
    traces: str = "none"
    service_name: str = "rerankd"
    # Prometheus-style metrics (OpenTelemetry) on http://<metrics_host>:<metrics_port>/metrics;
    # 0 turns the endpoint off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464


@dataclass
class ResilienceSettings:
    # What Rerank does when the model cannot score (Triton down, not ready, failing, or too
    # slow for the deadline): "degrade" answers OK with the fallback order, flagged degraded;
    # "fail" answers with the error status.
    on_model_failure: str = "degrade"
    # Degrade only: inference gets the request's remaining budget minus this reserve (ms), so
    # a slow Triton leaves time for the fallback order and the reply before the deadline.
    deadline_reserve_ms: float = 50.0
    # Degrade only: the circuit breaker opens after this many consecutive failed or timed-out
    # inference calls (requests then take the fallback at once) and lets one probe request
    # through after breaker_open_s.
    breaker_failures: int = 5
    breaker_open_s: float = 1.0


@dataclass
class SecuritySettings:
    # API keys (hashed, with scopes); empty: every RPC is open (fine on 127.0.0.1 only).
    # The file holds JSON lines {"name", "sha256", "scopes"} (`rerankd keys new` appends one)
    # and is re-read when it changes, so keys rotate without a restart.
    api_keys_file: str = ""
    # More keys, fixed for the process: "name:sha256hex:scope1|scope2,...".
    api_keys: str = ""
    # How often the keys file is checked for changes (seconds).
    api_keys_reload_interval_s: float = 1.0
    # With keys configured, health checks and server reflection stay open unless set false
    # (then they need a valid key, of any scope).
    open_health: bool = True
    open_reflection: bool = True
    # Server certificate and key (PEM) turn TLS on; a client CA turns on mTLS (clients must
    # present a certificate it signed). Checked at start (server.api.tls).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""


@dataclass
class PrivacySettings:
    # Key of the keyed hash that stands for user ids in logs, traces and metric labels;
    # empty: a random key per process (hashes then differ between processes).
    user_id_hash_key: str = ""


@dataclass
class OnlineSettings:
    # Online evaluation (`rerankd report online`): each OK Rerank's first log_top_k items,
    # with its request id, user and model version, are written to the feature store off the
    # request path (a bounded queue of queue_size replies; when full, replies go unlogged
    # and are counted) and kept retention_s seconds.
    log_impressions: bool = True
    log_top_k: int = 20
    retention_s: float = 30 * 24 * 3600.0
    queue_size: int = 10_000
    # An event counts for a ranking only this long after it was shown (the report's default).
    attribution_window_s: float = 24 * 3600.0


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    triton: TritonSettings = field(default_factory=TritonSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    rules: RulesSettings = field(default_factory=RulesSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    online: OnlineSettings = field(default_factory=OnlineSettings)


def parse_weights(text: str, field: str = "model.event_weights") -> dict[str, float]:
    """``"view=0,click=1"`` -> ``{"view": 0.0, "click": 1.0}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise InvalidArgument(f"expected type=weight, got {part!r}", field=field) from None
        if not sep or not key.strip() or out[key.strip()] < 0:
            raise InvalidArgument(f"expected type=weight >= 0, got {part!r}", field=field)
    return out


def _coerce(value: object, typ: object, name: str) -> object:
    if typ in ("bool", bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"not a boolean: {value!r}", field=name)
    caster = {"int": int, "float": float, "str": str, "Path": Path}.get(
        typ if isinstance(typ, str) else getattr(typ, "__name__", ""), str
    )
    try:
        return caster(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"cannot read {value!r} as {caster.__name__}", field=name) from None


def _apply(settings: Settings, section: str, key: str, value: object, source: str) -> None:
    sect = getattr(settings, section, None)
    if sect is None or not dataclasses.is_dataclass(sect):
        raise InvalidArgument(f"unknown settings section in {source}", field=section)
    fields = {f.name: f for f in dataclasses.fields(sect)}
    if key not in fields:
        raise InvalidArgument(f"unknown setting in {source}", field=f"{section}.{key}")
    hints = typing.get_type_hints(type(sect))
    setattr(sect, key, _coerce(value, hints[key], f"{section}.{key}"))


def load_settings(
    path: Path | str | None = None,
    env: typing.Mapping[str, str] | None = None,
    overrides: typing.Mapping[str, object] | None = None,
) -> Settings:
    """Build settings from defaults, then a TOML file, then environment, then ``overrides``.

    ``overrides`` keys are ``"section.field"``; ``None`` values are ignored (unset flags).
    """
    settings = Settings()
    env = os.environ if env is None else env
    path = path or env.get("RERANKD_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read settings file: {exc}", field=str(path)) from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise InvalidArgument("expected a [section] table", field=section)
            for key, value in values.items():
                _apply(settings, section, key, value, str(path))
    for section_field in dataclasses.fields(settings):
        for f in dataclasses.fields(getattr(settings, section_field.name)):
            name = f"RERANKD_{section_field.name}_{f.name}".upper()
            if name in env:
                _apply(settings, section_field.name, f.name, env[name], "environment")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply(settings, section, key, value, "flags")
    return settings
