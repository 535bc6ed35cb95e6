"""Dependencies point one way: entry points -> serving / model sides -> the shared contract.

Every import counts, the ones inside functions too (they hide a cycle, they do not remove it).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"cli", "server", "contract", "interactions", "training", "evaluation", "export", "perf"}
# Which of our packages each package may import (itself always).
ALLOWED = {
    "contract": set(),
    "server": {"contract"},
    "interactions": {"contract", "server"},  # loading a data set into the gateway's feature store
    "export": {"contract", "interactions"},
    "evaluation": {"contract", "interactions", "export", "server"},  # the served path starts a real gateway
    "training": {"contract", "interactions", "export", "evaluation"},  # validated with the protocol
    "cli": OURS - {"cli", "perf"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no package {package}/"
    bad = {}
    for f in files:
        extra = imported_packages(f) - ALLOWED[package] - {package}
        if extra:
            bad[str(f.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"{package}/ may import only {sorted(ALLOWED[package])}: {bad}"


def test_the_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from training.train import train\n    import evaluation.metrics\n")
    assert imported_packages(f) == {"training", "evaluation"}
