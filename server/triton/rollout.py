"""Rolling out model versions: the roll-out state, canary bucketing, and the commands that
drive Triton (``rerankd model load|promote|rollback|canary|unload|list``).

The state lives next to the model, ``<repository>/<model>/rollout.json`` (shared by every
gateway and by Triton's volume), replaced atomically. No file: the gateways serve the newest
READY version, as before roll-outs existed.

Which versions Triton holds is written into the model's ``config.pbtxt`` as
``version_policy: { specific: { versions: [...] } }`` and loaded with a plain repository
load. Not a config override in the load call: Triton 2.51 reloads *every* version of a model
loaded with an override (the serving version would restart cold under traffic), while a
changed file makes it load or unload only the versions that changed; and a restarted Triton
reads the file, so it comes back with the roll-out's versions, not just the newest one.

A version takes traffic only after ``warm_up`` has sent it real requests (tokenized with its
own tokenizer and renderer) until its latency settles.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from contract.model_spec import with_version_policy
from server.errors import InvalidArgument, NotFound, Unavailable
from server.triton.pool import parse_urls

log = logging.getLogger(__name__)

ROLLOUT_FILE = "rollout.json"
CONFIG_FILE = "config.pbtxt"
MAX_PREVIOUS = 5  # versions remembered for rollback, most recent first


# -- the state ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutState:
    """``serving``: the version every user gets unless routed to ``candidate``, which a
    ``share`` of users (by hashed user id, see ``canary_bucket``) gets; ``previous``: the
    versions served before, most recent first (``rollback`` goes back to the first)."""

    serving: str
    candidate: str = ""
    share: float = 0.0
    previous: tuple[str, ...] = ()
    updated_at: str = ""

    def __post_init__(self) -> None:
        for name, v in (("serving", self.serving), ("candidate", self.candidate)):
            if v and not v.isdigit():
                raise InvalidArgument(f"must be a version number, not {v!r}", field=name)
        if not self.serving:
            raise InvalidArgument("must name a version", field="serving")
        if not 0.0 <= self.share <= 1.0:
            raise InvalidArgument(f"must be within [0, 1], not {self.share}", field="share")
        if any(not p.isdigit() for p in self.previous):
            raise InvalidArgument(f"must hold version numbers, not {list(self.previous)}", field="previous")

    @property
    def versions(self) -> list[str]:
        """The versions Triton must hold for this state (serving, then the candidate)."""
        return [self.serving] + ([self.candidate] if self.candidate and self.candidate != self.serving else [])

    def to_json(self) -> str:
        d = asdict(self)
        d["previous"] = list(self.previous)
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RolloutState:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"not JSON: {exc}", field=ROLLOUT_FILE) from None
        if not isinstance(data, dict):
            raise InvalidArgument("must be a JSON object", field=ROLLOUT_FILE)
        try:
            return cls(serving=str(data.get("serving") or ""), candidate=str(data.get("candidate") or ""),
                       share=float(data.get("share") or 0.0),
                       previous=tuple(str(p) for p in data.get("previous") or ()),
                       updated_at=str(data.get("updated_at") or ""))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(str(exc), field=ROLLOUT_FILE) from None


def rollout_path(repo: Path, name: str) -> Path:
    return Path(repo) / name / ROLLOUT_FILE


def read_state(repo: Path, name: str) -> RolloutState | None:
    """The model's roll-out state, or None without a file. A malformed file raises
    ``InvalidArgument`` (the watcher keeps the state it had)."""
    try:
        text = rollout_path(repo, name).read_text()
    except FileNotFoundError:
        return None
    return RolloutState.from_json(text)


def write_state(repo: Path, name: str, state: RolloutState) -> RolloutState:
    """Write ``state`` (stamped now) atomically: readers see the old file or the new one."""
    state = RolloutState(state.serving, state.candidate, state.share, state.previous,
                         datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write_atomic(rollout_path(repo, name), state.to_json())
    return state


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- canary routing ----------------------------------------------------------------------------
def canary_bucket(salt: str, user_id: str) -> float:
    """The user's fixed place in [0, 1): the same on every gateway and across restarts
    (SHA-256 of salt and id; not the keyed privacy hash, whose key may be per process)."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def routes_to_candidate(salt: str, user_id: str, share: float) -> bool:
    """Whether a user is served by the canary candidate at ``share``. Sticky: raising the
    share only adds users, so a user never flips back and forth while a canary widens."""
    return share > 0.0 and canary_bucket(salt, user_id) < share


# -- the model's config.pbtxt --------------------------------------------------------------------
def with_versions(config_text: str, versions: Sequence[str]) -> str:
    """``config_text`` with its version policy set to exactly ``versions`` (the rest kept
    as written)."""
    nums = sorted({int(v) for v in versions})
    policy = "version_policy: { specific: { versions: [ %s ] } }" % ", ".join(map(str, nums))
    try:
        return with_version_policy(config_text, policy)
    except ValueError as exc:
        raise InvalidArgument(str(exc), field=CONFIG_FILE) from None


def config_inputs(config_text: str) -> tuple[str, ...]:
    """The input names a model's config declares (its layout, shared by all its versions)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        cfg = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InvalidArgument(f"does not parse: {exc}", field=CONFIG_FILE) from None
    return tuple(i.name for i in cfg.input)


def versions_on_disk(repo: Path, name: str) -> list[str]:
    folder = Path(repo) / name
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


# -- warm-up ---------------------------------------------------------------------------------------
@dataclass
class WarmUp:
    """What ``warm_up`` did: rounds sent, the first and last round's time (ms), settled or not."""

    version: str
    rounds: int = 0
    first_ms: float = 0.0
    last_ms: float = 0.0
    settled: bool = False
    round_ms: list[float] = field(default_factory=list)


def _warm_requests(served, sizes: Sequence[int], history: int = 10):
    """(user text, item texts) of realistic requests for ``served`` (``ServedModel``): items
    the version has ID tokens for when it has any (as the catalogue is read), else titled
    items, and a user with ``history`` recent items; one request per size in ``sizes``."""
    from contract.items import Item
    from contract.render import Renderer

    renderer = Renderer.for_model(served.manifest, served.tokenizer)
    ids = list(getattr(served.manifest, "item_tokens", None) or [])
    need = history + max(sizes)
    ids = (ids * (need // len(ids) + 1))[:need] if ids else [f"warm{k}" for k in range(need)]
    genres = ("Drama", "Comedy|Romance", "Action|Thriller", "Animation|Children's", "Sci-Fi")
    items = [Item(i, title=f"A film called number {k} ({1960 + k % 40})",
                  attributes={"year": str(1960 + k % 40), "genres": genres[k % len(genres)]})
             for k, i in enumerate(ids)]
    user = renderer.user(items[:history], max_items=history)
    pool = renderer.items(items[history:])
    return [(user, pool[:n]) for n in sizes]


async def _warm(scorer, served, *, sizes: Sequence[int], concurrency: int, min_rounds: int,
                max_s: float, tolerance: float) -> WarmUp:
    report = WarmUp(served.version)
    requests = [served.tokenizer.encode(u, items) for u, items in _warm_requests(served, sizes)]
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        for batch in requests:  # every size each round: each shape the version will see
            await asyncio.gather(*(scorer.score(batch, served.spec, served.version, timeout_s=30.0)
                                   for _ in range(concurrency)))
        report.round_ms.append((time.perf_counter() - t0) * 1000.0)
        r = report.round_ms
        # Settled: the median of the last three rounds within ``tolerance`` of the three before.
        if len(r) >= max(min_rounds, 6):
            now, before = statistics.median(r[-3:]), statistics.median(r[-6:-3])
            if now <= before * (1.0 + tolerance):
                report.settled = True
                break
    report.rounds = len(report.round_ms)
    report.first_ms = report.round_ms[0] if report.round_ms else 0.0
    report.last_ms = report.round_ms[-1] if report.round_ms else 0.0
    return report


def warm_up(url: str, repo: Path, name: str, version: str, *, credentials=None,
            sizes: Sequence[int] = (10, 50, 100, 200), concurrency: int = 1, min_rounds: int = 6,
            max_s: float = 60.0, tolerance: float = 0.15) -> WarmUp:
    """Send ``version`` real requests straight to Triton (its own tokenizer and renderer, the
    sizes in ``sizes``, ``concurrency`` at once) until a round's time settles or ``max_s``."""
    from server.triton.client import TritonScorer
    from server.triton.models import load_served_model

    try:
        served = load_served_model(repo, name, version)
    except (OSError, ValueError, KeyError) as exc:
        raise NotFound(f"cannot read version {version}'s manifest/tokenizer: {exc}", field="version") from None

    async def run() -> WarmUp:
        scorer = TritonScorer(url, credentials)
        try:
            return await _warm(scorer, served, sizes=sizes, concurrency=concurrency,
                               min_rounds=min_rounds, max_s=max_s, tolerance=tolerance)
        finally:
            await scorer.close()

    return asyncio.run(run())


SUMMARY_FIGURES = ("ndcg@10", "hr@10")  # what ``list`` shows of a manifest's validation figures


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


# -- the commands ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionInfo:
    version: str
    triton_state: str  # READY, UNAVAILABLE, LOADING, UNLOADING, or "" (not loaded)
    scoring: str
    engine: str
    created_at: str
    figures: dict  # validation figures the manifest records (may be empty)
    error: str = ""


class Rollout:
    """The roll-out commands for one model: Triton's explicit model control plus the state file.

    ``poll_interval_s`` is the gateways' ``triton.poll_interval_s``: after the state changes,
    the command waits two of them plus ``settle_s`` (in-flight requests on the old version
    finish) before it unloads anything a gateway may still send to."""

    def __init__(self, url: str, repo: Path, name: str, *, poll_interval_s: float = 1.0,
                 settle_s: float = 2.0, credentials=None, out: Callable[[str], None] = print,
                 warm: Callable[..., WarmUp] | None = None):
        import tritonclient.grpc as tc

        self.url = url
        # ``triton.url`` may list several Tritons (``server.triton.pool``) on one repository:
        # each must hold the same versions, and each instance is warmed.
        self.urls = parse_urls(url)
        self.repo = Path(repo)
        self.name = name
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        self.credentials = credentials
        self.out = out
        self._warm = warm or warm_up
        self._clients = {u: tc.InferenceServerClient(u, creds=credentials) for u in self.urls}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    # -- what is where
    def triton_states(self) -> dict[str, str]:
        """version -> Triton's state of it (versions Triton knows of). With several Tritons:
        READY only where every one has it READY, else each one's state (``url=STATE``)."""
        from tritonclient.utils import InferenceServerException

        per: dict[str, dict[str, str]] = {}
        for url, client in self._clients.items():
            try:
                index = client.get_model_repository_index(as_json=True, client_timeout=5.0)
            except InferenceServerException as exc:
                raise Unavailable(f"Triton at {url} does not answer: {exc.message()}") from None
            per[url] = {m.get("version", ""): m.get("state", "") for m in index.get("models", [])
                        if m.get("name") == self.name and m.get("version")}
        if len(per) == 1:
            return next(iter(per.values()))
        out = {}
        for v in sorted({v for states in per.values() for v in states}, key=int):
            seen = {u: per[u].get(v, "") for u in self.urls}
            out[v] = ("READY" if all(st == "READY" for st in seen.values())
                      else " ".join(f"{u}={st or '-'}" for u, st in seen.items()))
        return out

    def ready(self) -> list[str]:
        return sorted((v for v, s in self.triton_states().items() if s == "READY"), key=int)

    def state(self) -> RolloutState | None:
        return read_state(self.repo, self.name)

    def current(self) -> RolloutState:
        """The state in force: the file, else what the gateways serve without one (the
        newest READY version). Raises when there is neither."""
        state = self.state()
        if state is not None:
            return state
        ready = self.ready()
        if not ready:
            raise Unavailable(f"model {self.name!r} has no READY version in Triton and no {ROLLOUT_FILE}: "
                              "load one first (rerankd triton loads the newest)")
        return RolloutState(serving=ready[-1])

    def info(self) -> list[VersionInfo]:
        from contract.model_spec import Manifest

        try:
            states = self.triton_states()
        except Unavailable:  # still list what is on disk
            states = {v: "unreachable" for v in versions_on_disk(self.repo, self.name)}
        out = []
        for v in sorted(set(versions_on_disk(self.repo, self.name)) | set(states), key=int):
            try:
                m = Manifest.read(self.repo / self.name / v / "manifest.json")
            except (OSError, ValueError, KeyError) as exc:
                out.append(VersionInfo(v, states.get(v, ""), "?", "?", "", {}, error=str(exc)))
                continue
            figures = {k: val for k, val in _flatten(m.metrics or {}).items()
                       if k.rsplit(".", 1)[-1] in SUMMARY_FIGURES}
            out.append(VersionInfo(v, states.get(v, ""), m.spec.scoring, m.engine, m.created_at, figures))
        return out

    # -- building blocks
    def _check_version(self, version: str) -> None:
        from contract.model_spec import Manifest

        if not version.isdigit():
            raise InvalidArgument(f"must be a version number, not {version!r}", field="version")
        folder = self.repo / self.name / version
        if not folder.is_dir():
            raise NotFound(f"{folder} does not exist (versions on disk: "
                           f"{', '.join(versions_on_disk(self.repo, self.name)) or 'none'})", field="version")
        try:
            spec = Manifest.read(folder / "manifest.json").spec
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidArgument(f"version {version} has no readable manifest.json: {exc}", field="version") from None
        declared = config_inputs((self.repo / self.name / CONFIG_FILE).read_text())
        if tuple(spec.input_names) != declared:
            raise InvalidArgument(
                f"version {version} is {spec.scoring} (inputs {', '.join(spec.input_names)}) but "
                f"{self.name}/{CONFIG_FILE} declares inputs {', '.join(declared)}: Triton serves every version "
                "of a model with one config, so versions of different layouts cannot be loaded together; "
                "serve it under another model name", field="version")

    def _hold(self, versions: Sequence[str]) -> None:
        """Make Triton hold exactly ``versions``: write them into config.pbtxt, load the model,
        and check each is READY. Versions held before and after are not reloaded."""
        from tritonclient.utils import InferenceServerException

        path = self.repo / self.name / CONFIG_FILE
        before = path.read_text()
        _write_atomic(path, with_versions(before, versions))
        for url, client in self._clients.items():
            try:
                client.load_model(self.name)
            except InferenceServerException as exc:
                # The file goes back to the versions held before: a Triton that restarts (or
                # the next command) must not pick up a set that failed to load.
                _write_atomic(path, before)
                raise Unavailable(f"Triton at {url} could not load {self.name} versions {', '.join(versions)}: "
                                  f"{exc.message()}") from None
        states = self.triton_states()
        missing = [v for v in versions if states.get(v) != "READY"]
        if missing:
            seen = ", ".join(f"{v}: {states.get(v) or 'absent'}" for v in missing)
            raise Unavailable(f"versions {', '.join(missing)} of {self.name} are not READY in Triton ({seen}); "
                              "see Triton's log")

    def _load_and_warm(self, version: str, keep: Sequence[str]) -> WarmUp:
        self._check_version(version)
        for v in keep:
            self._check_version(v)
        t0 = time.monotonic()
        self._hold(list(dict.fromkeys([*keep, version])))
        self.out(f"loaded {self.name} version {version} in Triton ({time.monotonic() - t0:.1f}s); warming up")
        for url in self.urls:
            report = self._warm(url, self.repo, self.name, version, credentials=self.credentials)
            where = f" on {url}" if len(self.urls) > 1 else ""
            self.out(f"warmed version {version}{where}: {report.rounds} rounds, {report.first_ms:.0f} ms -> "
                     f"{report.last_ms:.0f} ms a round" + ("" if report.settled else " (not settled: time limit)"))
        return report

    def _publish(self, state: RolloutState) -> RolloutState:
        written = write_state(self.repo, self.name, state)
        self.out(f"{ROLLOUT_FILE}: serving {written.serving}"
                 + (f", candidate {written.candidate} for {written.share:.0%} of users" if written.candidate else ""))
        return written

    def _wait_followed(self) -> None:
        """Let every gateway read the new state and finish requests sent under the old one."""
        wait_s = 2 * self.poll_interval_s + self.settle_s
        self.out(f"waiting {wait_s:.1f}s for gateways to follow")
        time.sleep(wait_s)

    def _pin_first(self) -> RolloutState:
        """The state in force, written down first if there is no file: once the file names
        the serving version, loading a newer one no longer moves traffic to it."""
        state = self.state()
        if state is None:
            state = self._publish(self.current())
            self._wait_followed()
        return state

    # -- the commands
    def load(self, version: str) -> WarmUp:
        """Load and warm ``version`` next to what is served; traffic does not move."""
        state = self._pin_first()
        # Versions loaded before stay loaded (a ``load`` never unloads).
        return self._load_and_warm(version, keep=list(dict.fromkeys([*state.versions, *self.ready()])))

    def canary(self, version: str, share: float) -> RolloutState:
        """Serve ``version`` to ``share`` of users (sticky by user id), the rest stay."""
        if not 0.0 < share <= 1.0:
            raise InvalidArgument(f"must be within (0, 1], not {share}", field="share")
        state = self._pin_first()
        if version == state.serving:
            raise InvalidArgument(f"version {version} is already serving", field="version")
        old_candidate = state.candidate if state.candidate != version else ""
        self._load_and_warm(version, keep=[state.serving])
        new = self._publish(RolloutState(state.serving, version, share, state.previous))
        if old_candidate:  # a canary replaced by another: the old candidate leaves Triton
            self._wait_followed()
            self._hold(new.versions)
            self.out(f"unloaded version {old_candidate}")
        return new

    def promote(self, version: str) -> RolloutState:
        """Serve ``version`` to everyone; the old serving version is unloaded (kept on disk,
        first in ``previous`` for ``rollback``)."""
        state = self._pin_first()
        if version == state.serving and not state.candidate:
            raise InvalidArgument(f"version {version} is already serving", field="version")
        if version != state.candidate or self.triton_states().get(version) != "READY":
            self._load_and_warm(version, keep=state.versions)
        previous = state.previous if version == state.serving else (state.serving, *state.previous)
        previous = tuple(p for p in dict.fromkeys(previous) if p != version)[:MAX_PREVIOUS]
        new = self._publish(RolloutState(version, "", 0.0, previous))
        self._wait_followed()
        self._hold(new.versions)
        self.out(f"unloaded {', '.join(v for v in state.versions if v != version)} (kept on disk)")
        return new

    def rollback(self) -> RolloutState:
        """A canary running: stop it (everyone back on the serving version). Otherwise serve
        the previous version again (loaded and warmed first) and unload the current one."""
        state = self._pin_first()
        if state.candidate:
            new = self._publish(RolloutState(state.serving, "", 0.0, state.previous))
            self._wait_followed()
            self._hold(new.versions)
            self.out(f"canary of version {state.candidate} stopped and unloaded; serving {state.serving}")
            return new
        if not state.previous:
            raise InvalidArgument(f"nothing to roll back to: {ROLLOUT_FILE} records no previous version",
                                  field="rollback")
        target = state.previous[0]
        self._load_and_warm(target, keep=[state.serving])
        new = self._publish(RolloutState(target, "", 0.0, state.previous[1:]))
        self._wait_followed()
        self._hold(new.versions)
        self.out(f"rolled back from version {state.serving} to {target}; {state.serving} unloaded (kept on disk)")
        return new

    def unload(self, version: str) -> RolloutState:
        """Unload ``version`` from Triton (its folder stays). Refuses the serving version;
        a canary candidate is first taken out of the routing."""
        state = self._pin_first()
        if version == state.serving:
            raise InvalidArgument(f"version {version} is serving: promote or roll back to another first",
                                  field="version")
        if version not in self.triton_states():
            raise NotFound(f"version {version} is not loaded in Triton", field="version")
        if version == state.candidate:
            state = self._publish(RolloutState(state.serving, "", 0.0, state.previous))
            self._wait_followed()
        keep = [v for v in self.ready() if v != version]
        self._hold(list(dict.fromkeys([*state.versions, *keep])))
        self.out(f"unloaded version {version} (kept on disk)")
        return state

