"""TLS credentials in one place: the gateway's server side (TLS, mTLS), its channel to Triton,
and the channels clients open to the gateway (``rerankd client``, health checks, load tests).

Files are read and checked here, before anything binds or connects: gRPC itself reports an
unreadable file or a key that does not match its certificate only as a failed handshake, much
later and without naming the file. Errors are ``InvalidArgument`` naming the setting (or flag).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.errors import InvalidArgument
from server.settings import SecuritySettings, TritonSettings


@dataclass(frozen=True)
class Names:
    """What errors call the CA, certificate and key: settings names, or a command's flags."""

    ca: str
    cert: str
    key: str


SERVER_NAMES = Names("security.tls_client_ca", "security.tls_cert", "security.tls_key")
TRITON_NAMES = Names("triton.tls_ca", "triton.tls_cert", "triton.tls_key")
FLAG_NAMES = Names("--tls-ca", "--tls-cert", "--tls-key")


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key; gRPC cannot
    # use encrypted keys anyway, so an empty password makes loading one fail here instead.
    return b""


def read_pem(path: str, name: str) -> bytes:
    """The bytes of a PEM file; ``InvalidArgument`` naming ``name`` if unreadable or not PEM."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}", field=name) from None
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{path} is not a PEM file", field=name)
    return data


def load_ca(path: str, name: str) -> bytes:
    """A PEM bundle of CA certificates, checked to hold at least one certificate."""
    data = read_pem(path, name)
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidArgument(f"{path} holds no valid certificate ({_reason(exc)})", field=name) from None
    return data


def load_pair(cert_path: str, key_path: str, names: Names) -> tuple[bytes, bytes]:
    """(certificate chain, private key) PEM bytes, checked to parse and to belong together."""
    cert = load_ca(cert_path, names.cert)  # a certificate chain parses as a CA bundle does
    key = read_pem(key_path, names.key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(Path(cert_path).expanduser(), Path(key_path).expanduser(), password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise InvalidArgument(f"{key_path} is not the private key of {names.cert} ({cert_path})",
                                  field=names.key) from None
        raise InvalidArgument(f"cannot load the private key {key_path} ({_reason(exc)}; "
                              "an unencrypted PEM key is needed)", field=names.key) from None
    return cert, key


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc)


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials | None:
    """The gateway's server credentials: ``None`` (plaintext) when no TLS file is set; TLS with
    ``tls_cert`` + ``tls_key``; mTLS (a client certificate signed by ``tls_client_ca`` is
    required) when the client CA is set too."""
    cert, key, ca = security.tls_cert, security.tls_key, security.tls_client_ca
    if not (cert or key or ca):
        return None
    if not cert or not key:
        missing = SERVER_NAMES.cert if not cert else SERVER_NAMES.key
        raise InvalidArgument("TLS needs both security.tls_cert and security.tls_key (mTLS: and "
                              "security.tls_client_ca)", field=missing)
    chain, private_key = load_pair(cert, key, SERVER_NAMES)
    client_ca = load_ca(ca, SERVER_NAMES.ca) if ca else None
    return grpc.ssl_server_credentials([(private_key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def channel_credentials(ca: str = "", cert: str = "", key: str = "", *,
                        names: Names = FLAG_NAMES) -> grpc.ChannelCredentials:
    """TLS channel credentials: ``ca`` verifies the server (empty: the system roots); ``cert`` +
    ``key``, a client certificate for a server that requires one (mTLS)."""
    if bool(cert) != bool(key):
        raise InvalidArgument(f"a client certificate needs both {names.cert} and {names.key}",
                              field=names.key if cert else names.cert)
    root = load_ca(ca, names.ca) if ca else None
    chain, private_key = load_pair(cert, key, names) if cert else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=private_key,
                                        certificate_chain=chain)


def triton_credentials(triton: TritonSettings) -> grpc.ChannelCredentials | None:
    """Credentials for the gateway's channel to Triton; ``None`` (plaintext) unless
    ``triton.tls`` or a ``triton.tls_*`` file is set."""
    if not (triton.tls or triton.tls_ca or triton.tls_cert or triton.tls_key):
        return None
    return channel_credentials(triton.tls_ca, triton.tls_cert, triton.tls_key, names=TRITON_NAMES)


def client_credentials(ca: str = "", cert: str = "", key: str = "", *,
                       tls: bool = False) -> grpc.ChannelCredentials | None:
    """A client's credentials from its ``--tls-*`` flags: ``None`` (plaintext) when none is set
    and ``tls`` is false."""
    if not (tls or ca or cert or key):
        return None
    return channel_credentials(ca, cert, key, names=FLAG_NAMES)


def channel_options(server_name: str = "", options: Sequence[tuple[str, object]] = ()) -> list:
    """Channel options, plus the name to verify the server's certificate against when it differs
    from the address's host (``server_name``)."""
    out = list(options)
    if server_name:
        out.append(("grpc.ssl_target_name_override", server_name))
    return out


def open_channel(addr: str, credentials: grpc.ChannelCredentials | None = None, *,
                 server_name: str = "", options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A blocking channel to ``addr``: TLS with ``credentials``, plaintext without."""
    opts = channel_options(server_name, options)
    if credentials is None:
        return grpc.insecure_channel(addr, options=opts)
    return grpc.secure_channel(addr, credentials, options=opts)


def open_aio_channel(addr: str, credentials: grpc.ChannelCredentials | None = None, *,
                     server_name: str = "", options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    """An asyncio channel to ``addr``: TLS with ``credentials``, plaintext without."""
    opts = channel_options(server_name, options)
    if credentials is None:
        return grpc.aio.insecure_channel(addr, options=opts)
    return grpc.aio.secure_channel(addr, credentials, options=opts)
