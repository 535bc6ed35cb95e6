"""API keys with scopes: the key store, and the gRPC interceptor that checks every call.

A caller sends ``authorization: Bearer <key>`` metadata. The gateway keeps only SHA-256
hashes (the keys are random and long, so a plain hash is enough) in a JSON-lines file and/or
``security.api_keys``; the file is re-read when it changes, so keys rotate without a restart.
Each method needs one scope (``METHOD_SCOPES``); ``admin`` implies every scope. Failures are
the typed errors ``Unauthenticated`` / ``PermissionDenied``, given their gRPC status by the
one table in ``server.api.errors``. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.api.errors import status_code_of
from server.errors import (
    InvalidArgument,
    PermissionDenied,
    RerankdError,
    Unauthenticated,
)
from server.settings import SecuritySettings

log = logging.getLogger(__name__)

SCOPES = frozenset({"rerank", "events:write", "items:write", "admin", "metrics"})
METHOD_SCOPES = {
    "/rerank.v1.Reranker/Rerank": "rerank",
    "/rerank.v1.Reranker/RecordEvents": "events:write",
    "/rerank.v1.Reranker/UpsertItems": "items:write",
    "/rerank.v1.Reranker/ForgetUser": "admin",
}
# Methods no table entry names need ``admin``: a new RPC is closed until it is given a scope.
DEFAULT_SCOPE = "admin"
ANY_KEY = ""  # a valid key of any scope (health and reflection when they are not open)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
RERANKER_PREFIX = "/rerank.v1.Reranker/"
KEY_PREFIX = "rk_"


def hash_key(key: str) -> str:
    """The hex SHA-256 that stands for ``key`` in the key file."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe text."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # SHA-256 of the key
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope == ANY_KEY or scope in self.scopes or "admin" in self.scopes


def _key(name: object, sha256: object, scopes: object, where: str) -> ApiKey:
    if not isinstance(name, str) or not name.strip() or any(c in name for c in ":,\n"):
        raise InvalidArgument(f"key name must be non-empty text without ':' or ',', got {name!r}", field=where)
    try:
        digest = bytes.fromhex(sha256) if isinstance(sha256, str) else b""
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise InvalidArgument(f"sha256 must be 64 hex digits (key {name!r})", field=where)
    if isinstance(scopes, str) or not isinstance(scopes, Iterable):
        raise InvalidArgument(f"scopes must be a list (key {name!r})", field=where)
    scopes = frozenset(scopes)
    if not scopes or scopes - SCOPES:
        raise InvalidArgument(f"key {name!r}: scopes must be among {sorted(SCOPES)}, got {sorted(map(str, scopes))}",
                              field=where)
    return ApiKey(name.strip(), digest, scopes)


def parse_scopes(text: str, sep: str = ",") -> list[str]:
    return [s.strip() for s in text.split(sep) if s.strip()]


def parse_env_keys(text: str, field: str = "security.api_keys") -> list[ApiKey]:
    """``"name:sha256hex:scope1|scope2,..."`` -> keys."""
    keys = []
    for part in parse_scopes(text):
        bits = part.split(":")
        # A scope holds a ':' itself ("events:write"): only the first two separators split.
        if len(bits) < 3:
            raise InvalidArgument("expected name:sha256hex:scope1|scope2", field=field)
        keys.append(_key(bits[0], bits[1], parse_scopes(":".join(bits[2:]), "|"), field))
    return _unique(keys, field)


def parse_key_file(text: str, source: str) -> list[ApiKey]:
    """JSON lines ``{"name": ..., "sha256": ..., "scopes": [...]}``; blank and ``#`` lines skipped."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"not JSON: {exc.msg}", field=where) from None
        if not isinstance(row, dict):
            raise InvalidArgument("expected an object {name, sha256, scopes}", field=where)
        keys.append(_key(row.get("name"), row.get("sha256"), row.get("scopes"), where))
    return _unique(keys, source)


def _unique(keys: list[ApiKey], where: str) -> list[ApiKey]:
    seen: set[str] = set()
    for k in keys:
        if k.name in seen:
            raise InvalidArgument(f"key name {k.name!r} appears twice", field=where)
        seen.add(k.name)
    return keys


def key_line(name: str, sha256: str, scopes: Iterable[str]) -> str:
    """One key-file line (checked as the reader will check it)."""
    scopes = sorted(set(scopes))
    _key(name, sha256, scopes, "key")
    return json.dumps({"name": name, "sha256": sha256, "scopes": scopes,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def append_key(path: Path, name: str, sha256: str, scopes: Iterable[str]) -> None:
    """Add a key to ``path`` (created owner-only); refused if the name is taken."""
    line = key_line(name, sha256, scopes)
    text = path.read_text() if path.exists() else ""
    if any(k.name == name for k in parse_key_file(text, str(path))):
        raise InvalidArgument(f"a key named {name!r} exists already (revoke it first)", field=str(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(("\n" if text and not text.endswith("\n") else "") + line + "\n")


def remove_key(path: Path, name: str) -> None:
    """Drop the key ``name`` from ``path``, replacing the file at once (never half-written)."""
    text = path.read_text()
    parse_key_file(text, str(path))  # a broken file is reported, not half-understood
    lines = text.splitlines(keepends=True)
    keep = [line for line in lines
            if not line.strip() or line.lstrip().startswith("#") or json.loads(line).get("name") != name]
    if len(keep) == len(lines):
        raise InvalidArgument(f"no key named {name!r}", field=str(path))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def bearer_token(value: str | None) -> str | None:
    """The key in an ``authorization`` value ``Bearer <key>`` (scheme case-insensitive)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class KeyStore:
    """The keys of ``security.api_keys`` (fixed) and ``security.api_keys_file`` (followed).

    The file is checked with one ``stat`` at most every ``reload_interval_s``, on the next
    check after that: a changed file is read again. A file that cannot be read or parsed at
    start is an error; later, it is logged and the keys in force stay.
    """

    def __init__(self, path: Path | str | None = None, fixed: Iterable[ApiKey] = (), *,
                 reload_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path) if path else None
        self.fixed = tuple(fixed)
        self.reload_interval_s = reload_interval_s
        self._clock = clock
        self._lock = threading.Lock()  # the metrics endpoint checks keys from its own thread
        self._signature: tuple[int, int, int] | None = None
        self._keys: tuple[ApiKey, ...] = self.fixed
        self._checked = clock()
        if self.path is not None:
            self._signature = self._stat()
            if self._signature is None:
                raise InvalidArgument(f"API keys file {self.path} not found", field="security.api_keys_file")
            self._keys = self._read()
            if not self._keys:
                log.warning("no API keys in %s: every RPC that needs a key is refused", self.path)

    @classmethod
    def from_settings(cls, sec: SecuritySettings) -> KeyStore | None:
        """The store for ``sec``; None when no keys are configured (every RPC open)."""
        fixed = parse_env_keys(sec.api_keys)
        if not sec.api_keys_file and not fixed:
            return None
        return cls(sec.api_keys_file or None, fixed, reload_interval_s=sec.api_keys_reload_interval_s)

    # -- reading ------------------------------------------------------------------------------
    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read(self) -> tuple[ApiKey, ...]:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise InvalidArgument(f"cannot read API keys file: {exc}", field="security.api_keys_file") from None
        keys = _unique([*self.fixed, *parse_key_file(text, str(self.path))], "security.api_keys + api_keys_file")
        return tuple(keys)

    def keys(self) -> tuple[ApiKey, ...]:
        """The keys in force (re-reading the file when it changed)."""
        if self.path is not None and self._clock() - self._checked >= self.reload_interval_s:
            with self._lock:
                if self._clock() - self._checked >= self.reload_interval_s:
                    self._checked = self._clock()
                    self._reload()
        return self._keys

    def _reload(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature  # a bad file is reported once, not at every check
        if signature is None:
            log.error("API keys file %s is gone; the %d keys in force stay", self.path, len(self._keys))
            return
        try:
            keys = self._read()
        except InvalidArgument as exc:
            log.error("API keys file not reloaded, the %d keys in force stay: %s", len(self._keys), exc)
            return
        self._keys = keys
        log.info("API keys reloaded from %s: %d keys (%s)", self.path, len(keys), ", ".join(k.name for k in keys))

    # -- checking -------------------------------------------------------------------------------
    def authenticate(self, key: str | None) -> ApiKey:
        """The key's entry, or ``Unauthenticated``."""
        if not key:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for k in self.keys():  # every entry compared, in constant time: no early exit
            if hmac.compare_digest(k.digest, digest):
                found = k
        if found is None:
            raise Unauthenticated("unknown API key")
        return found

    def authorize(self, key: str | None, scope: str) -> ApiKey:
        """The key's entry if it holds ``scope`` (``ANY_KEY``: any valid key); else the typed error."""
        found = self.authenticate(key)
        if not found.allows(scope):
            raise PermissionDenied(f"API key {found.name!r} lacks scope {scope!r}")
        return found

    def http_check(self, authorization: str | None) -> int:
        """HTTP status for the metrics endpoint: 200, 401 (no or unknown key), 403 (no
        ``metrics`` or ``admin`` scope)."""
        try:
            self.authorize(bearer_token(authorization), "metrics")
        except Unauthenticated:
            return 401
        except PermissionDenied:
            return 403
        return 200


def required_scope(method: str, *, open_health: bool, open_reflection: bool) -> str | None:
    """The scope ``method`` (``/package.Service/Method``) needs; None: open to anyone."""
    if method.startswith(HEALTH_PREFIX):
        return None if open_health else ANY_KEY
    if method.startswith(REFLECTION_PREFIX):
        return None if open_reflection else ANY_KEY
    return METHOD_SCOPES.get(method, DEFAULT_SCOPE)


class _Throttle:
    """At most one log line per ``every_s`` (a client retrying a bad key must not flood the log)."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self._last, self.suppressed = every_s, -every_s, 0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self.suppressed += 1
            return False
        self._last = now
        return True


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks each call's key and scope before its handler runs; a refused call is answered
    with its status by a stand-in handler of the same kind (unary / streaming)."""

    def __init__(self, store: KeyStore, *, open_health: bool = True, open_reflection: bool = True,
                 metrics=None):
        self.store = store
        self.open_health = open_health
        self.open_reflection = open_reflection
        self.metrics = metrics  # server.metrics.Metrics: refusals are counted with their code
        self._throttle = _Throttle()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        method = details.method
        scope = required_scope(method, open_health=self.open_health, open_reflection=self.open_reflection)
        if scope is None:
            return await continuation(details)
        try:
            self.store.authorize(bearer_token(_metadata(details, "authorization")), scope)
        except RerankdError as exc:
            handler = await continuation(details)
            if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
                return None
            if self._throttle():
                log.warning("refused %s: %s (%s)%s", method, exc.status, exc,
                            f"; {self._throttle.suppressed} more refusals not logged"
                            if self._throttle.suppressed else "")
                self._throttle.suppressed = 0
            if self.metrics is not None and method.startswith(RERANKER_PREFIX):
                self.metrics.rpc_done(method[len(RERANKER_PREFIX):], exc.status, 0.0)
            return _refusing(handler, status_code_of(exc), str(exc))
        return await continuation(details)


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for k, v in details.invocation_metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return None


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    async def refuse(request_or_iterator, context):
        await context.abort(code, details)

    kind = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[
        (handler.request_streaming, handler.response_streaming)]
    # The body is left unparsed: a refused caller learns nothing about it.
    return kind(refuse)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, maybe ``[v6]``) reaches only this machine."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-like names and other host names: assume reachable


def exposure_warnings(host: str, *, keys: bool, tls: bool, metrics_host: str | None = None) -> list[str]:
    """Clear warnings for a gateway reachable from other machines without keys or TLS."""
    out = []
    if not is_loopback(host):
        if not keys:
            out.append(f"gRPC bound on {host} (not loopback) with no API keys: anyone who can reach "
                       "the port can call every RPC. Set security.api_keys_file (`rerankd keys new`).")
        if not tls:
            out.append(f"gRPC bound on {host} (not loopback) without TLS: requests"
                       + (" and API keys" if keys else "") + " travel in clear text. Set security.tls_cert/tls_key.")
    if metrics_host is not None and not is_loopback(metrics_host) and not keys:
        out.append(f"metrics endpoint bound on {metrics_host} (not loopback) with no API keys: "
                   "anyone who can reach it can read it.")
    return out
