import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcad.config import RunConfig, config_from_dict, load_config
from streamcad.errors import ConfigError


def test_defaults_are_safe():
    cfg = config_from_dict({})
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5555"
    assert cfg.publish.allow_remote is False
    assert cfg.model.allow_unverified is False
    assert cfg.publish.heartbeat_s <= 1.0


def test_toml_file_round_trip(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text(
        'version = 1\nframes = 10\n[source]\nuri = "file:x.mp4"\nloop = true\n'
        "[smoothing]\ntau_s = 0.25\n[roi]\nbox = [1, 2, 30, 40]\n"
    )
    cfg = load_config(p, overrides={"publish": {"stream": "probe7"}})
    assert cfg.source.uri == "file:x.mp4" and cfg.source.loop
    assert cfg.smoothing.tau_s == 0.25
    assert cfg.roi.box == [1, 2, 30, 40]
    assert cfg.publish.stream == "probe7"
    assert cfg.frames == 10


@pytest.mark.parametrize(
    "data, key, hint",
    [
        ({"smoothing": {"tau": 1}}, "smoothing.tau", "unknown key"),
        ({"smoothing": {"tau_s": -1}}, "smoothing.tau_s", ">= 0.01"),
        ({"source": {"pace": "fast"}}, "source.pace", "Invalid enum value"),
        ({"publish": {"heartbeat_s": 5}}, "publish.heartbeat_s", "<= 1.0"),
        ({"model": {"threads": "two"}}, "model.threads", "Expected `int`"),
        ({"roi": {"box": [1, 2, 3]}}, "roi.box", "length"),
        ({"frames": 0}, "frames", ">= 1"),
        ({"colour": 1}, "colour", "unknown key"),
        ({"version": 2}, "version", "unsupported config version"),
        ({"smoothing": {"on_threshold": 0.3, "off_threshold": 0.5}}, "smoothing", "off_threshold"),
    ],
)
def test_bad_values_name_the_key(data, key, hint):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    msg = str(err.value)
    assert msg.startswith(key + ":"), msg
    assert hint in msg


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid keys here: .*tau_s"):
        config_from_dict({"smoothing": {"tua_s": 1.0}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\nuri=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=12,
)
_sections = st.sampled_from(list(RunConfig.__struct_fields__) + ["bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_sections, _json | st.dictionaries(st.text(max_size=14), _json, max_size=4), max_size=4))
def test_loader_only_raises_config_error(data):
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        assert str(exc).split(":")[0]  # always names a key (or '(top level)')
    else:
        assert isinstance(cfg, RunConfig)
