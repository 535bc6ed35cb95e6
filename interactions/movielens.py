"""MovieLens-100K: fetch, typed loaders and the leave-one-out split.

The data set ships inside the RecBole wheel (``recbole/dataset_example/ml-100k/``); we fetch
that wheel with pip (the only reachable source here), pull three files out with ``zipfile``
and never install RecBole itself.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contract.items import Item

RECBOLE_REQUIREMENT = "recbole==1.2.1"
DATASET = "ml-100k"
_MEMBER_DIR = "recbole/dataset_example/ml-100k"
# SHA-256 of the files inside recbole-1.2.1-py3-none-any.whl (computed once, pinned here).
CHECKSUMS: dict[str, str] = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}

Upto = Literal["valid", "test"]


class DatasetFetchError(RuntimeError):
    """pip could not download the wheel (no registry, no such version...)."""


class ChecksumError(RuntimeError):
    """A data file does not match its pinned SHA-256."""


# -- fetch ------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_ok(folder: Path) -> bool:
    return all((folder / n).is_file() and _sha256(folder / n) == s for n, s in CHECKSUMS.items())


def _pip_download(dest: Path, log: Callable[[str], object]) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-d", str(dest), RECBOLE_REQUIREMENT,
    ]
    log(f"[ml-100k] downloading {RECBOLE_REQUIREMENT} wheel with pip (about 2 MB) ...")
    t0 = time.monotonic()
    try:
        # pip prints no progress bar into a pipe, so relay its own status lines instead.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise DatasetFetchError(f"cannot run pip: {e}") from e
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail = (tail + [line])[-20:]
            if line.lstrip().startswith(("Collecting", "Downloading", "Saved", "Successfully")):
                log(f"[ml-100k]   pip: {line.strip()}")
    if proc.wait() != 0:
        raise DatasetFetchError(
            f"pip download {RECBOLE_REQUIREMENT} failed (exit {proc.returncode}):\n" + "\n".join(tail)
        )
    wheels = sorted(dest.glob("recbole-*.whl"))
    if not wheels:
        raise DatasetFetchError(f"pip reported success but no recbole wheel in {dest}")
    log(f"[ml-100k] downloaded {wheels[0].name} in {time.monotonic() - t0:.1f}s")
    return wheels[0]


# Where data sets are cached (gitignored); fetched once, checksum-verified.
CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "data"


def fetch_movielens(cache_dir: Path = CACHE_DIR, log: Callable[[str], object] = print) -> Path:
    """Return ``cache_dir/ml-100k`` holding ``ml-100k.{inter,item,user}``, checksum-verified.

    Idempotent: cached files are re-verified and only re-fetched when missing or altered.
    Raises ``DatasetFetchError`` when pip cannot download, ``ChecksumError`` on a bad file.
    """
    folder = Path(cache_dir) / DATASET
    if _cached_ok(folder):
        return folder
    if any((folder / n).exists() for n in CHECKSUMS):
        log(f"[ml-100k] cache at {folder} incomplete or altered: fetching again")
    with tempfile.TemporaryDirectory(prefix="ml100k-") as tmp:
        wheel = _pip_download(Path(tmp), log)
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            for name, expected in CHECKSUMS.items():
                data = zf.read(f"{_MEMBER_DIR}/{name}")
                got = hashlib.sha256(data).hexdigest()
                if got != expected:
                    raise ChecksumError(f"{name}: sha256 {got} != pinned {expected}")
                # Write-then-rename: a killed fetch never leaves a half file that looks cached.
                part = folder / f".{name}.part"
                part.write_bytes(data)
                os.replace(part, folder / name)
    log(f"[ml-100k] ready in {folder}")
    return folder


# -- loaders ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Interaction:
    """One rating; ``row`` is its 0-based data-row position in the .inter file."""

    user_id: str
    item_id: str
    rating: float
    timestamp: int
    row: int


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Tab-separated file with a RecBole typed header (``name:type``): (names, [(line_no, fields)])."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # the original GroupLens files are latin-1
        text = raw.decode("latin-1")
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file")
    names = [h.split(":", 1)[0].strip() for h in lines[0].split("\t")]
    rows = [(n, line.split("\t")) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    return names, rows


def _columns(path: Path, names: list[str], wanted: Sequence[str]) -> list[int]:
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(f"{path}: header {names} lacks column(s) {missing}")
    return [names.index(w) for w in wanted]


def load_interactions(folder: Path) -> list[Interaction]:
    """All rows of ``ml-100k.inter`` in file order. A malformed row raises ``ValueError``."""
    path = Path(folder) / f"{DATASET}.inter"
    names, rows = _read_table(path)
    iu, ii, ir, it = _columns(path, names, ("user_id", "item_id", "rating", "timestamp"))
    out: list[Interaction] = []
    for row, (line_no, f) in enumerate(rows):
        try:
            # timestamp is typed float in the header but holds whole Unix seconds
            out.append(Interaction(f[iu].strip(), f[ii].strip(), float(f[ir]), int(float(f[it])), row))
        except (IndexError, ValueError) as e:
            raise ValueError(f"{path}:{line_no}: bad interaction row {f!r}") from e
    return out


_PLACEHOLDERS = {"", "unknown", "unkonwn"}  # item 267 is 'unkonwn' in title and year


def _year_from_title(title: str) -> tuple[str, str]:
    """'Name (1995)' -> ('Name', '1995'); otherwise (title, '')."""
    t = title.rstrip()
    if len(t) >= 7 and t.endswith(")") and t[-6] == "(" and t[-5:-1].isdigit():
        return t[:-6].rstrip(), t[-5:-1]
    return title, ""


def load_items(folder: Path) -> list[Item]:
    """``ml-100k.item`` as ``Item``s: title, attributes ``year`` (absent when unknown) and
    ``genres`` ('|'-joined original names, e.g. "Children's|Comedy"); ``text`` stays empty.
    Odd rows: short rows are padded, a placeholder title becomes '' and a year stuck
    in the title (item 1412: '... (1995)' with year 'V') is moved to ``year``."""
    path = Path(folder) / f"{DATASET}.item"
    names, rows = _read_table(path)
    (iid,) = _columns(path, names, ("item_id",))
    col = {n: names.index(n) for n in ("movie_title", "release_year", "class") if n in names}
    out: list[Item] = []
    seen: set[str] = set()
    for line_no, f in rows:
        f = f + [""] * (len(names) - len(f))
        item_id = f[iid].strip()
        if not item_id or item_id in seen:
            raise ValueError(f"{path}:{line_no}: empty or repeated item_id {item_id!r}")
        seen.add(item_id)
        title = f[col["movie_title"]].strip() if "movie_title" in col else ""
        year = f[col["release_year"]].strip() if "release_year" in col else ""
        genres = f[col["class"]].split() if "class" in col else []
        if title.lower() in _PLACEHOLDERS:
            title = ""
        if not (year.isdigit() and len(year) == 4):
            title, year = _year_from_title(title)
        attrs = {"genres": "|".join(genres)} if genres else {}
        if year:
            attrs["year"] = year
        out.append(Item(item_id, title, "", attrs))
    return out


# -- leave-one-out split ----------------------------------------------------------------
def _order_key(x: Interaction) -> tuple[int, int]:
    return (x.timestamp, x.row)


@dataclass
class Split:
    """Leave-one-out split. ``valid`` / ``test`` map user -> held-out item id; the matching
    ``Interaction``s are in ``valid_interactions`` / ``test_interactions``."""

    train: list[Interaction]
    valid: dict[str, str]
    test: dict[str, str]
    valid_interactions: dict[str, Interaction] = field(default_factory=dict)
    test_interactions: dict[str, Interaction] = field(default_factory=dict)
    _train_by_user: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        by_user: dict[str, list[Interaction]] = defaultdict(list)
        for x in self.train:
            by_user[x.user_id].append(x)
        self._train_by_user = {u: [x.item_id for x in sorted(xs, key=_order_key)] for u, xs in by_user.items()}

    @property
    def users(self) -> list[str]:
        """Every user in the split, sorted (numerically where ids are numbers)."""
        return sorted(set(self._train_by_user) | set(self.valid) | set(self.test), key=id_sort_key)

    def history(self, user: str, upto: Upto = "valid") -> list[str]:
        """Item ids the user had before the target, most recent first.

        ``upto='valid'``: train items; ``upto='test'``: train items plus the valid item."""
        if upto not in ("valid", "test"):
            raise ValueError(f"upto must be 'valid' or 'test', not {upto!r}")
        items = list(self._train_by_user.get(user, ()))
        if upto == "test" and user in self.valid:
            items.append(self.valid[user])
        return items[::-1]

    def interactions(self, upto: Literal["valid", "test", "all"] = "test") -> list[Interaction]:
        """What is known before predicting ``upto``, in (timestamp, row) order:
        'valid' = train, 'test' = train + valid, 'all' = train + valid + test."""
        if upto not in ("valid", "test", "all"):
            raise ValueError(f"upto must be 'valid', 'test' or 'all', not {upto!r}")
        out = list(self.train)
        if upto in ("test", "all"):
            out += self.valid_interactions.values()
        if upto == "all":
            out += self.test_interactions.values()
        return sorted(out, key=_order_key)


def leave_one_out(interactions: Iterable[Interaction]) -> Split:
    """Per user, order interactions by (timestamp, row) ascending: equal timestamps are
    broken by the file's row order (a later row counts as more recent). The last one is
    the test target, the second last the validation target, the rest train. Every user
    is kept and no rating threshold applies; a user with one interaction has only a test
    target, with two a test and a validation target."""
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for x in interactions:
        by_user[x.user_id].append(x)
    train: list[Interaction] = []
    valid: dict[str, Interaction] = {}
    test: dict[str, Interaction] = {}
    for user in sorted(by_user, key=id_sort_key):
        xs = sorted(by_user[user], key=_order_key)
        test[user] = xs.pop()
        if xs:
            valid[user] = xs.pop()
        train += xs
    return Split(
        train=train,
        valid={u: x.item_id for u, x in valid.items()},
        test={u: x.item_id for u, x in test.items()},
        valid_interactions=valid,
        test_interactions=test,
    )


def id_sort_key(item_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order ('2' < '10'), any others after them, as text."""
    return (0, int(item_id), item_id) if item_id.isascii() and item_id.isdigit() else (1, 0, item_id)
