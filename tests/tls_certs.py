"""A throwaway PKI for TLS tests, made with the ``openssl`` command line.

    pki = make_pki(tmp_path)      # pki.ca, pki.server_cert / server_key, pki.client_cert / client_key
    other = make_pki(tmp_path / "other")   # an unrelated CA: its certificates must be refused

The server certificate is valid for ``localhost`` and ``127.0.0.1``; keys are unencrypted
P-256 (PKCS#8 PEM); everything expires after two days.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SKIP_REASON = "the openssl command line is not installed (needed to make test certificates)"


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _leaf(d: Path, name: str, subject: str, extensions: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def make_pki(d: Path, name: str = "rerankd test CA") -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-sha256", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _leaf(d, "server", "/CN=localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
          "keyUsage=critical,digitalSignature\n")
    _leaf(d, "client", "/CN=rerankd-test-client",
          "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
    return Pki(d, d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key",
               d / "client.pem", d / "client.key")
