"""The sources registry: each scheme's typed options, the [source] keys it honours, what the
registry refuses, and real sources it builds (the repo's sample sweep, a video written here)."""

from __future__ import annotations

import inspect
import re
import time
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest

import streamcad.sources as sources
from streamcad.config import SourceConfig, config_from_dict
from streamcad.errors import ConfigError, SourceError
from streamcad.manifest import CLASS_NAMES
from streamcad.pipeline import _open_source
from streamcad.sources import (
    CONFIG_KEYS,
    SourceOptions,
    open_source,
    register_source,
    source_from_config,
    source_options,
    source_options_type,
)
from streamcad.sources.sweep import SAMPLE_DIR, SweepSource, load_image_list


@pytest.fixture
def uris(tmp_path) -> dict[str, str]:
    """One URI per built-in source (file:DIR is the recording variant); none is opened."""
    return {"file": "file:/nonexistent.mp4", "recording": f"file:{tmp_path}", "device": "device:0",
            "url": "url:rtsp://127.0.0.1:1/x", "gst": "gst:videotestsrc ! appsink", "sweep": "sweep:"}


@pytest.fixture
def registry():
    """Put the registry back as it was after a test that registers."""
    defaults, variants = dict(sources._DEFAULTS), {k: list(v) for k, v in sources._VARIANTS.items()}
    yield
    sources._DEFAULTS.clear()
    sources._DEFAULTS.update(defaults)
    sources._VARIANTS.clear()
    sources._VARIANTS.update(variants)


def _config(**source):
    return config_from_dict({"source": source})


def _drain(src, n_max: int, timeout: float = 20.0) -> list:
    frames, deadline = [], time.monotonic() + timeout
    while len(frames) < n_max and time.monotonic() < deadline:
        f = src.read(timeout=0.5)
        if f is not None:
            frames.append(f)
        elif src.ended:
            return frames
    if len(frames) < n_max:
        raise AssertionError(f"{src.uri}: {len(frames)} frames within {timeout} s, not ended: {src.stats}")
    return frames


# ------------------------------------------------------------------------- typed options
EXPECTED_TYPES = {"file": "FileOptions", "recording": "RecordingOptions", "device": "DeviceOptions",
                  "url": "UrlOptions", "gst": "GstOptions", "sweep": "SweepOptions"}


@pytest.mark.parametrize("name", list(EXPECTED_TYPES))
def test_each_schemes_options_type_rejects_an_unknown_key_by_name(name, uris):
    opts_type = source_options_type(uris[name])
    assert opts_type.__name__ == EXPECTED_TYPES[name] and issubclass(opts_type, SourceOptions)
    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus_key`"):
        msgspec.convert({"bogus_key": 1}, opts_type)
    with pytest.raises(SourceError, match=r"bogus_key: unknown option for a \w+: source.*; it accepts .*hang_timeout_s"):
        source_options(uris[name], bogus_key=1)


@pytest.mark.parametrize("name,key,value", [
    ("sweep", "screen", (100, 100)),  # the renderer needs at least 320 x 240
    ("sweep", "sector", "round"),
    ("sweep", "fps", 0.0),
    ("sweep", "seed", -1),
    ("sweep", "loop", "yes"),
    ("device", "fourcc", "MJPEG"),
    ("device", "width", 0),
    ("url", "open_timeout_ms", 0),
    ("file", "pace", "fast"),
    ("recording", "hang_timeout_s", -1.0),
    ("gst", "stale_after_s", 0.0),
])
def test_a_value_out_of_its_range_is_named(name, key, value, uris):
    with pytest.raises(ConfigError, match=re.escape(f"{key} = {value!r}: ")):
        source_options(uris[name], **{key: value})


def test_options_mirror_the_keyword_arguments_of_the_class_they_build(uris):
    """Every Options field is a keyword argument of its class (or a ThreadedSource one), with the
    class's own default: the registry never passes a default the class would not choose."""
    for name, uri in uris.items():
        entry = sources._entry(*sources._split(uri))
        kw = {}
        for klass in reversed(entry.load().__mro__):
            if "__init__" in vars(klass):
                kw.update({n: p.default for n, p in inspect.signature(klass.__init__).parameters.items()
                           if p.kind is inspect.Parameter.KEYWORD_ONLY})
        fields = {f.name: f.default for f in msgspec.structs.fields(entry.options)}
        assert fields == kw, name


def test_the_config_keys_are_the_source_sections_keys():
    keys = set(SourceConfig.__struct_fields__) - {"uri"}
    assert set(CONFIG_KEYS) == {k for k in keys if not k.startswith("reconnect_")}


# ------------------------------------------------------------------------- [source] keys
TAKES = {"file": "loop, pace", "recording": "loop, pace", "sweep": "loop, pace, seed, fps",
         "device": "fps, width, height, fourcc", "url": "none of them", "gst": "none of them"}


@pytest.mark.parametrize("name,key,value", [
    ("sweep", "fourcc", "MJPG"),
    ("sweep", "width", 640),
    ("file", "seed", 3),
    ("file", "fps", 30.0),  # a file is paced by its own rate
    ("recording", "fps", 30.0),
    ("device", "loop", True),
    ("device", "pace", "none"),
    ("url", "fps", 25.0),
    ("gst", "loop", True),
])
def test_a_source_key_the_scheme_cannot_honour_is_one_line_naming_it(name, key, value, uris):
    uri = uris[name]
    scheme = uri.split(":")[0]
    label = f"a {scheme}: source" + (" (recording)" if name == "recording" else "")
    with pytest.raises(ConfigError) as err:
        source_from_config(_config(uri=uri, **{key: value}).source)
    text = str(err.value)
    assert text.startswith(f"source.{key} = {value!r}: {label} cannot honour it; {scheme}: takes {TAKES[name]} (of ")
    assert "\n" not in text
    with pytest.raises(ConfigError, match=rf"^source\.{key} = "):  # the pipeline asks the registry
        _open_source(_config(uri=uri, **{key: value}))


def test_a_key_left_at_its_default_is_no_error(uris):
    """fourcc = None and seed = 0 are the [source] defaults: a sweep: / file: is built as usual."""
    for uri in (uris["sweep"], "file:/nonexistent.mp4"):
        opts = sources._convert(sources._entry(*sources._split(uri)), {}, "")
        assert type(opts) is source_options_type(uri)
    src = source_from_config(_config(uri="sweep:", seed=0, fourcc=None).source)
    try:
        assert isinstance(src, SweepSource) and src.renderer.seed == 0
    finally:
        src.close()


def test_an_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(SourceError, match="unknown scheme 'rtsp'; valid schemes: file, device, url, gst, sweep$"):
        source_from_config(_config(uri="rtsp://127.0.0.1/x").source)


# ------------------------------------------------------------------------- what registering takes
def test_registering_needs_a_source_options_type(registry):
    class NotOptions(msgspec.Struct):
        pass

    with pytest.raises(TypeError, match="expects a SourceOptions subclass"):
        register_source("toy", NotOptions)
    with pytest.raises(TypeError, match="expects a SourceOptions subclass"):
        register_source("toy", {"loop": bool})
    assert "toy" not in sources.source_schemes()


def test_registering_refuses_source_keys_it_cannot_take(registry):
    class Misspelt(SourceOptions):
        SOURCE_KEYS = ("loops",)
        loops: bool = False

    class NoField(SourceOptions):
        SOURCE_KEYS = ("seed",)

    with pytest.raises(TypeError, match="SOURCE_KEYS has 'loops', not a \\[source\\] key"):
        register_source("toy", Misspelt)
    with pytest.raises(TypeError, match="SOURCE_KEYS has 'seed' but no field 'seed'"):
        register_source("toy", NoField)
    with pytest.raises(TypeError, match="a scheme is lower-case"):
        register_source("Toy Scheme", SourceOptions)


def test_a_scheme_has_one_default_and_a_variant_needs_it(registry):
    with pytest.raises(SourceError, match="scheme 'sweep' is already registered"):
        register_source("sweep", sources.SweepOptions, name="other")(SweepSource)
    with pytest.raises(SourceError, match="variant .* of scheme 'toy', which has no default"):
        register_source("toy", sources.SweepOptions, name="toyvariant", when=lambda rest: True)(SweepSource)
    assert sources.source_schemes() == ["file", "device", "url", "gst", "sweep"]


def test_a_registered_scheme_is_built_from_config_with_its_options(registry):
    """A plug-in: its class registered under a new scheme; [source] keys reach it through its Options."""
    class ToyOptions(sources.SweepOptions):
        SOURCE_KEYS = ("seed", "pace")

    register_source("toy", ToyOptions)(SweepSource)
    assert "toy" in sources.source_schemes()
    src = source_from_config(_config(uri="toy:", seed=7, pace="none", reconnect_initial_s=0.3).source)
    try:
        assert isinstance(src, SweepSource) and src.renderer.seed == 7 and src.lossless
        assert src.reconnect_policy.initial_s == 0.3
    finally:
        src.close()
    with pytest.raises(ConfigError, match="source.fps = 12.0: a toy: source cannot honour it; toy: takes seed, pace"):
        source_from_config(_config(uri="toy:", fps=12.0).source)

    class Loader:  # a loader that returns something else than a source class
        pass

    register_source("toy2", SourceOptions)(lambda: Loader)
    with pytest.raises(SourceError, match="not a FrameSource subclass"):
        open_source("toy2:")


# ------------------------------------------------------------------------- real sources
def test_the_registry_builds_a_sweep_over_the_repos_sample_images():
    images = load_image_list(SAMPLE_DIR)
    cfg = _config(uri="sweep:", seed=4, fps=50.0, pace="none", reconnect_max_attempts=2).source
    with source_from_config(cfg) as a, open_source("sweep:sample", seed=4, fps=50.0, pace="none") as b:
        fa, fb = _drain(a, 8), _drain(b, 8)
        assert len(a.renderer.items) == len(images) > 1
        assert a.renderer.fps == 50.0 and a.renderer.seed == 4 and not a.loop and a.lossless
        assert a.reconnect_policy.max_attempts == 2
        assert [f.index for f in fa] == list(range(8))
        for x, y in zip(fa, fb, strict=True):  # same seed, same pixels
            assert x.image.shape == (768, 1024) and x.image.dtype == np.uint8 and x.label in CLASS_NAMES
            assert np.array_equal(x.image, y.image)
    with open_source("sweep:", seed=5, fps=50.0, pace="none", screen=(320, 240)) as c:
        fc = _drain(c, 8)
        assert fc[0].image.shape == (240, 320)
        assert c.renderer.order.tolist() != a.renderer.order.tolist()  # another seed, another order


def _write_video(path: Path, n: int, fps: float) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 120))
    assert vw.isOpened(), f"VideoWriter could not open {path}"
    for i in range(n):
        vw.write(np.full((120, 160, 3), 20 + 20 * i, np.uint8))  # frame i: gray level 20 + 20 i
    vw.release()
    return path


def test_the_registry_builds_a_real_video_from_config(tmp_path):
    path = _write_video(tmp_path / "clip.avi", 10, 25.0)
    with source_from_config(_config(uri=f"file:{path}", pace="none").source) as src:
        frames = _drain(src, 100)
        assert src.lossless and not src.loop
    assert len(frames) == 10
    levels = [float(f.image.mean()) for f in frames]
    assert np.allclose(levels, [20 + 20 * i for i in range(10)], atol=3), levels
    with source_from_config(_config(uri=f"file:{path}", pace="none", loop=True).source) as src:
        frames = _drain(src, 25)  # past the end: it starts over
        assert src.loop and abs(float(frames[12].image.mean()) - 60) < 3
