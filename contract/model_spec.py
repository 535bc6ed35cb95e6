"""The model signature: one spec drives ONNX export axes, config.pbtxt
and the gateway's padding. Export writes it into each version's ``manifest.json``; the
gateway reads it back from the version it serves, so the two can never disagree."""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contract.blend import Blend
from contract.shared_prefix import INPUT_NAMES, POOLS

# The rule name a version's own blend gets in explanations.
MODEL_BLEND = "model_blend"
PAIRWISE = "pairwise"
SHARED_PREFIX = "shared_prefix"
SCORINGS = (PAIRWISE, SHARED_PREFIX)


@dataclass(frozen=True)
class ModelSpec:
    name: str = "reranker"
    input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    output_name: str = "score"
    # 128: a typical request (<= 128 candidates) is one Triton call; longer lists are split
    # and the chunks sent concurrently.
    max_batch_size: int = 128
    # Pairs of one request are padded to the smallest bucket that fits the longest pair,
    # so that Triton's batcher (which needs equal shapes) can join different callers.
    seq_buckets: tuple[int, ...] = (32, 64, 128, 256)
    # No waiting for a fuller batch: requests that queue while the instance is busy are still
    # batched together, but an idle instance starts at once. A 2 ms delay cost sequential
    # 10-candidate requests 2 ms of latency (overhead p50 5.3 -> 3.3 ms) and bought no
    # throughput at 8 concurrent callers (perf/, measured side by side).
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = (32, 64, 128)
    # How a version reads a request: ``pairwise`` (a row per (user, candidate) pair, one
    # score per row: imported Hugging Face cross-encoders) or ``shared_prefix`` (rows of
    # ``contract.shared_prefix``: the user once, many candidates, a score per token).
    scoring: str = PAIRWISE
    # Shared prefix: a candidate's score is its first token's ("first") or the mean of its
    # tokens' scores ("mean"); ``contract.shared_prefix.reading_tokens``.
    pool: str = "first"

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {self.pool!r}")

    @classmethod
    def shared_prefix(cls, name: str = "reranker", pool: str = "first") -> "ModelSpec":
        """The signature of a shared-prefix version: a row holds the user prefix and as many
        candidates as fit in its bucket; a request is one row up to about 500 warm candidates."""
        return cls(name=name, input_names=INPUT_NAMES, max_batch_size=16, seq_buckets=(32, 64, 128, 256, 512),
                   preferred_batch_sizes=(), scoring=SHARED_PREFIX, pool=pool)

    @property
    def output_dims(self) -> str:
        """config.pbtxt dims of the output: a score per row, or per token of a row."""
        return "-1" if self.scoring == SHARED_PREFIX else "1"

    @property
    def max_seq_len(self) -> int:
        return self.seq_buckets[-1]

    def bucket_for(self, length: int) -> int:
        """Smallest bucket >= ``length`` (lengths are already truncated to ``max_seq_len``)."""
        i = bisect.bisect_left(self.seq_buckets, length)
        return self.seq_buckets[min(i, len(self.seq_buckets) - 1)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("input_names", "seq_buckets", "preferred_batch_sizes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def config_pbtxt(self, *, backend: str = "python", instance_count: int = 1,
                     parameters: dict[str, str] | None = None) -> str:
        """Triton ``config.pbtxt`` for this signature, on CPU instances.

        ``backend="python"`` runs the version's engine (ONNX Runtime or OpenVINO) inside
        Triton's Python backend (``model_repository/reranker/model.py``). A GPU engine (a
        TensorRT plan on ``KIND_GPU`` instances) lands here with the export that produces it.
        """
        lines = [f'name: "{self.name}"', f'backend: "{backend}"', f"max_batch_size: {self.max_batch_size}"]
        for name in self.input_names:
            lines.append(f'input {{\n  name: "{name}"\n  data_type: TYPE_INT64\n  dims: [ -1 ]\n}}')
        lines.append(f'output {{\n  name: "{self.output_name}"\n  data_type: TYPE_FP32\n  dims: [ {self.output_dims} ]\n}}')
        preferred = ", ".join(str(b) for b in self.preferred_batch_sizes if b <= self.max_batch_size)
        # No queue policy (request timeouts): with one, Triton 2.51's batcher sometimes left a
        # queued request waiting ~500 ms after the instance freed up (a 2-chunk request: 3 of 8
        # took 520 ms instead of 47; none without the policy). So late calls are not dropped
        # from the queue: they run, and the gateway discards their answers.
        lines.append(
            "dynamic_batching {\n"
            + (f"  preferred_batch_size: [ {preferred} ]\n" if preferred else "")
            + f"  max_queue_delay_microseconds: {self.max_queue_delay_us}\n}}"
        )
        lines.append(f"instance_group {{\n  count: {instance_count}\n  kind: KIND_CPU\n}}")
        lines.append("version_policy: { latest: { num_versions: 1 } }")
        for key, value in sorted((parameters or {}).items()):
            lines.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
        return "\n".join(lines) + "\n"


_POLICY = re.compile(r"^\s*version_policy\s*:?\s*\{", re.M)


def version_policy_span(config_text: str) -> tuple[int, int] | None:
    """Where a config.pbtxt's ``version_policy { ... }`` block starts and ends (None: no
    policy, Triton's default). ``ValueError`` when its braces do not balance."""
    m = _POLICY.search(config_text)
    if m is None:
        return None
    start = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
    depth = 0
    for i in range(m.end() - 1, len(config_text)):
        if config_text[i] == "{":
            depth += 1
        elif config_text[i] == "}":
            depth -= 1
            if depth == 0:
                return start, i + 1
    raise ValueError("unbalanced braces in version_policy")


def with_version_policy(config_text: str, policy: str) -> str:
    """``config_text`` with its version policy replaced by ``policy`` (the whole
    ``version_policy: {...}`` text), or ``policy`` appended when it has none."""
    span = version_policy_span(config_text)
    if span is None:
        return config_text.rstrip("\n") + "\n" + policy + "\n"
    return config_text[:span[0]] + policy + config_text[span[1]:]


def pinned_version_policy(config_text: str) -> str | None:
    """The policy text when it names specific versions (a roll-out pinned them: see
    ``server.triton.rollout``), else None."""
    try:
        span = version_policy_span(config_text)
    except ValueError:
        return None
    if span is None:
        return None
    policy = config_text[span[0]:span[1]]
    return policy if "specific" in policy else None


@dataclass
class Manifest:
    """What a model version is: written by export next to the model, read by the gateway."""

    spec: ModelSpec
    base_model: str
    engine: str = "onnxruntime"
    created_at: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    export_check: dict = field(default_factory=dict)
    # contract.render.RenderOptions as plain data; empty (old manifests): plain text.
    render: dict = field(default_factory=dict)
    # Items with a trained ID token in this version's vocabulary; every other item is read
    # from its text alone (cold). Empty: no item tokens (or a version older than this field).
    item_tokens: list[str] = field(default_factory=list)
    # Added to the score of items read from text alone (``contract.calibration``).
    text_offset: float = 0.0
    # The blend of model and retrieval scores chosen on validation: the gateway's default
    # for rule sets without a blend of their own. None: the model score alone.
    blend: Blend | None = None

    def write(self, path: Path) -> None:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        data["blend"] = self.blend.to_dict() if self.blend is not None else None
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        """Raises ValueError for a manifest that is not JSON or whose blend is invalid."""
        data = json.loads(path.read_text())
        data["spec"] = ModelSpec.from_dict(data.get("spec", {}))
        # Versions written before ``blend`` was a field of its own kept it under training.
        recorded = data.get("blend") or (data.get("training") or {}).get("blend")
        data["blend"] = Blend.from_dict(recorded, name=MODEL_BLEND) if recorded else None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
