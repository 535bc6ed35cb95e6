from pathlib import Path

import pytest

from server.errors import InvalidArgument
from server.settings import load_settings


def test_defaults_file_env_flags_in_order(tmp_path: Path):
    cfg = tmp_path / "rerankd.toml"
    cfg.write_text('[server]\nport = 6000\nmax_in_flight = 7\n[triton]\nurl = "file:1"\n')
    env = {"RERANKD_SERVER_PORT": "6001", "RERANKD_TRITON_URL": "env:2"}
    s = load_settings(cfg, env=env, overrides={"server.port": 6002, "store.url": None})
    assert s.server.port == 6002  # flag beats env beats file
    assert s.triton.url == "env:2"
    assert s.server.max_in_flight == 7  # file value survives where nothing overrides it
    assert s.store.url.startswith("sqlite:///")  # None flag = unset


def test_types_are_coerced(tmp_path):
    s = load_settings(env={"RERANKD_TRITON_POLL_INTERVAL_S": "0.5",
                           "RERANKD_TRITON_MODEL_REPOSITORY": str(tmp_path)})
    assert s.triton.poll_interval_s == 0.5
    assert s.triton.model_repository == tmp_path


@pytest.mark.parametrize("env, field", [
    ({"RERANKD_SERVER_PORT": "eighty"}, "server.port"),
])
def test_bad_values_name_the_setting(env, field):
    with pytest.raises(InvalidArgument) as err:
        load_settings(env=env)
    assert err.value.field == field


def test_unknown_setting_in_file_is_rejected(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[server]\nprot = 1\n")
    with pytest.raises(InvalidArgument) as err:
        load_settings(cfg, env={})
    assert err.value.field == "server.prot"


def test_event_weights_parse_and_reject_bad_entries():
    from server.settings import parse_weights

    assert parse_weights("view=0, click=1.5") == {"view": 0.0, "click": 1.5}
    assert parse_weights("") == {}
    for bad in ("view", "view=x", "=1", "view=-1"):
        with pytest.raises(InvalidArgument):
            parse_weights(bad)
