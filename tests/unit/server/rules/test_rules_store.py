"""The rules file provider: load, select by name, hot reload, keep the old rules on errors."""

import asyncio
import logging
import os

import pytest

from server.errors import InvalidArgument, NotFound
from server.rules.store import RulesProvider

GOOD = """
rule_sets:
  default:
    blend: {retrieval_weight: 0.5}
  homepage:
    pins: [{item_id: a, position: 1}]
"""
GOOD2 = """
rule_sets:
  default:
    boosts: [{name: b, when: {attribute: g, equals: x}, add: 1}]
"""


def write(path, text, bump=1):
    path.write_text(text)
    # Make the change visible even on file systems with coarse mtimes.
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_no_file_means_an_empty_default():
    p = RulesProvider(None)
    assert p.get("").is_empty and p.get("default").is_empty
    assert p.maybe_reload() is False
    with pytest.raises(NotFound) as err:
        p.get("homepage")
    assert err.value.field == "rule_set"


def test_get_by_name(tmp_path):
    f = tmp_path / "rules.yaml"
    write(f, GOOD)
    p = RulesProvider(f)
    assert p.get("").blend.retrieval_weight == 0.5
    assert p.get("homepage").pins[0].item_id == "a"
    with pytest.raises(NotFound, match="known: default, homepage"):
        p.get("nope")


def test_missing_default_falls_back_to_empty(tmp_path):
    f = tmp_path / "rules.yaml"
    write(f, "rule_sets: {homepage: {exclude_unavailable: true}}")
    assert RulesProvider(f).get("").is_empty


@pytest.mark.parametrize("text", ["rule_sets: {default: {blend: {weight: 1}}}", "rule_sets: [", ""])
def test_a_broken_file_at_start_is_an_error(tmp_path, text):
    f = tmp_path / "rules.yaml"
    write(f, text)
    with pytest.raises(InvalidArgument):
        RulesProvider(f)
    with pytest.raises(InvalidArgument):
        RulesProvider(tmp_path / "absent.yaml")


def test_reload_on_change_and_keep_previous_on_error(tmp_path, caplog):
    f = tmp_path / "rules.yaml"
    write(f, GOOD)
    p = RulesProvider(f)
    assert p.maybe_reload() is False  # unchanged: nothing to do

    write(f, GOOD2, bump=1)
    assert p.maybe_reload() is True
    assert p.get("").boosts[0].name == "b"
    with pytest.raises(NotFound):
        p.get("homepage")

    caplog.set_level(logging.ERROR, logger="server.rules.store")
    write(f, "rule_sets:\n  default:\n    boosts: [{name: b, when: {attribute: g, equals: x}, multiply: -1}]\n", bump=2)
    assert p.maybe_reload() is False
    assert p.get("").boosts[0].add == 1.0  # previous rules still in force
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "invalid rules file" in errors[0].getMessage()
    assert "rule_sets.default.boosts[0].multiply" in errors[0].getMessage()
    assert "keeping the previous rules" in errors[0].getMessage()
    assert p.last_error

    assert p.maybe_reload() is False  # same broken file: not logged again
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    f.unlink()  # a deleted file also keeps the rules
    assert p.maybe_reload() is False and p.get("").boosts
    assert "cannot read rules file" in caplog.records[-1].getMessage()

    write(f, GOOD, bump=3)
    assert p.maybe_reload() is True
    assert p.get("homepage") and p.last_error is None


def test_atomic_replace_is_seen(tmp_path):
    f = tmp_path / "rules.yaml"
    write(f, GOOD)
    p = RulesProvider(f)
    tmp = tmp_path / "rules.yaml.tmp"
    write(tmp, GOOD2, bump=0)
    os.replace(tmp, f)
    assert p.maybe_reload() is True and p.get("").boosts


def test_watch_applies_changes_within_the_interval(tmp_path):
    f = tmp_path / "rules.yaml"
    write(f, GOOD)
    p = RulesProvider(f)

    async def scenario():
        task = asyncio.create_task(p.watch(0.02))
        try:
            write(f, GOOD2)
            for _ in range(200):
                await asyncio.sleep(0.01)
                if p.get("").boosts:
                    break
            assert p.get("").boosts[0].name == "b"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
