"""Reading a Prometheus text endpoint in tests (the gateway's ``/metrics``)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request


def scrape(port: int) -> dict[str, float]:
    """``{'name{labels}': value}`` from the Prometheus text at ``/metrics``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` carrying ``labels``."""
    hits = [v for k, v in samples.items()
            if re.fullmatch(rf"{name}(\{{.*\}})?", k) and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())]
    assert len(hits) == 1, (name, labels, [k for k in samples if k.startswith(name)])
    return hits[0]


def fetch(port: int, key: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of ``/metrics``, with ``Authorization: Bearer key`` when given."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
