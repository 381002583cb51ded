"""The preview message and its encoder: real JPEGs of real images, real sockets on loopback."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import cv2
import jsonschema
import msgspec
import numpy as np
import pytest

from streamcad.client import Subscriber
from streamcad.errors import MessageError, StreamcadError
from streamcad.lesion import input_to_frame
from streamcad.messages import SCHEMA_DIR, Preview, SaliencyMap, Score, decode_frame, encode_frame
from streamcad.preview import PreviewEncoder
from streamcad.transport import Publisher

SAMPLE = Path(__file__).resolve().parents[1] / "streamcad" / "data" / "sample" / "images"


@pytest.fixture
def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _frame() -> np.ndarray:
    img = cv2.imread(str(sorted(SAMPLE.glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def _preview(**over) -> Preview:
    fields = dict(schema=1, stream="probe0", publisher="ab12", seq=0, frame_index=7, t_capture_ns=10,
                  t_publish_ns=20, format="jpeg", image=b"\xff\xd8\xff\xe0abc", width=48, height=36,
                  frame_width=640, frame_height=480, roi=(10, 20, 300, 200),
                  saliency=SaliencyMap(width=2, height=3, kind="lesion_probability", box=(1.5, -2.0, 300.0, 300.0),
                                       data=bytes([0, 10, 20, 30, 40, 255])),
                  lesion={"box": (50, 60, 40, 30), "confidence": 0.8})
    fields.update(over)
    return msgspec.convert(fields, Preview)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_preview_round_trip_and_topic(encoding):
    msg = _preview()
    frame = encode_frame(msg, encoding)
    assert frame.startswith(b"preview/probe0 ")
    back = decode_frame(frame)
    assert back == msg and back.image == b"\xff\xd8\xff\xe0abc" and back.saliency.data[-1] == 255


def test_preview_schema_validates_and_rejects():
    schema = json.loads((SCHEMA_DIR / "preview.schema.json").read_text())
    full = json.loads((SCHEMA_DIR / "message.schema.json").read_text())
    good = json.loads(msgspec.json.encode(_preview()))
    jsonschema.Draft202012Validator(schema).validate(good)
    jsonschema.Draft202012Validator(full).validate(good)
    bad = dict(good, format="png")
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)


def test_saliency_of_the_wrong_size_is_refused_by_name():
    good = json.loads(msgspec.json.encode(_preview()))
    good["saliency"]["width"] = 3  # 3 x 3 cells but 6 bytes
    with pytest.raises(MessageError, match="saliency data has 6 bytes; expected width \\* height = 9"):
        decode_frame(b"preview/probe0 " + json.dumps(good).encode())


def test_encoder_jpeg_is_the_downscaled_frame():
    img = _frame()
    enc = PreviewEncoder(fps=10, max_side=200, quality=80, saliency_kind="attention", input_size=160)
    try:
        small = enc.shrink(img)
        h, w = img.shape
        assert max(small.shape) == 200 and abs(small.shape[1] / small.shape[0] - w / h) < 0.02
        fields = enc.encode(frame_index=3, t_capture_ns=5, image=img, roi=None, saliency=None, lesion=None)
    finally:
        enc.close()
    jpeg = cv2.imdecode(np.frombuffer(fields["image"], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert jpeg.shape == small.shape == (fields["height"], fields["width"])
    assert (fields["frame_width"], fields["frame_height"]) == (w, h)
    ref = cv2.resize(img, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(jpeg.astype(float) - ref).mean() < 3.0  # the same picture, JPEG-close
    other = cv2.resize(_frame()[::-1], (small.shape[1], small.shape[0])).astype(float)
    assert np.abs(jpeg.astype(float) - other).mean() > 10.0  # and not just any picture


def test_saliency_grid_lands_where_the_model_looked():
    """A one-hot cell of the saliency grid, drawn over the published box, covers the frame point
    the pipeline's saliency peak (the inverse letterbox) names for that cell."""
    S, roi = 160, (100, 40, 400, 250)  # a wide ROI: letterbox pads top and bottom
    sal = np.zeros((20, 20), np.float32)
    sal[14, 5] = 0.7
    enc = PreviewEncoder(fps=10, max_side=480, quality=70, saliency_kind="attention", input_size=S)
    try:
        m = enc.saliency_map(sal, roi)
    finally:
        enc.close()
    q = np.frombuffer(m["data"], np.uint8).reshape(m["height"], m["width"])
    assert q[14, 5] == 255 and q.sum() == 255  # attention: max-normalised
    bx, by, bw, bh = m["box"]
    cx, cy = bx + (5 + 0.5) * bw / 20, by + (14 + 0.5) * bh / 20
    ex, ey = input_to_frame((5 + 0.5) * S / 20, (14 + 0.5) * S / 20, roi, S)
    assert abs(cx - ex) < 1e-6 and abs(cy - ey) < 1e-6
    assert bx == pytest.approx(100.0) and bw == pytest.approx(400.0) and by < 40  # padding above the ROI
    enc2 = PreviewEncoder(fps=10, max_side=480, quality=70, saliency_kind="lesion_probability", input_size=S)
    try:
        q2 = np.frombuffer(enc2.saliency_map(sal, roi)["data"], np.uint8)
    finally:
        enc2.close()
    assert q2.max() == round(0.7 * 255)  # probabilities stay absolute


def test_due_is_a_rate_limit_on_capture_time():
    enc = PreviewEncoder(fps=10, max_side=64, quality=50, saliency_kind="attention", input_size=160)
    try:
        t = np.arange(60) * 33_333_333  # 2 s of frames at 30 fps: 0 .. 1.967 s
        due = [enc.due(int(x)) for x in t]
        enc._t_due = None
        due25 = [enc.due(int(x)) for x in 10**10 + np.arange(50) * 40_000_000]  # 2 s at 25 fps
    finally:
        enc.close()
    assert sum(due) == 20 and due[0]  # 10 per second, the first frame included
    assert sum(due25) == 20  # the grid: not 1 in 3 frames (8.3/s) for 40 ms frames


def test_encoder_skips_the_older_job_when_busy_and_counts_it():
    img = _frame()
    enc = PreviewEncoder(fps=30, max_side=120, quality=60, saliency_kind="attention", input_size=160)
    try:
        with enc._cv:  # hold the encoder off: both offers land before it can take one
            enc.offer(frame_index=1, t_capture_ns=1, image=img, roi=None, saliency=None, lesion=None)
            enc.offer(frame_index=2, t_capture_ns=2, image=img, roi=None, saliency=None, lesion=None)
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            got = enc.take()
            time.sleep(0.01)
    finally:
        enc.close()
    assert got is not None and got["frame_index"] == 2 and got["skipped"] == 1


def test_bad_settings_are_one_line_errors():
    with pytest.raises(StreamcadError, match="expected 0 < fps <= 60"):
        PreviewEncoder(fps=0, max_side=480, quality=70, saliency_kind="attention", input_size=160)
    with pytest.raises(StreamcadError, match="saliency_kind 'heat'"):
        PreviewEncoder(fps=5, max_side=480, quality=70, saliency_kind="heat", input_size=160)


def _score() -> dict:
    return dict(frame_index=1, t_capture_ns=1, latency_ms={"infer": 1.0}, probs=None, malignancy=None,
                state="flagged", flags=["blank"], roi=None, model_sha256="ab")


def test_subscribers_get_previews_only_when_they_ask(free_tcp_endpoint):
    ep = free_tcp_endpoint
    with Publisher(ep, stream="probe0") as pub:
        plain = Subscriber(ep)
        both = Subscriber(ep, kinds=("score", "preview"))
        latest = Subscriber(ep, latest_only=True)  # b"" under the hood: previews filtered in recv()
        try:
            deadline = time.monotonic() + 5
            while pub.subscriptions < 4 and time.monotonic() < deadline:  # plain: 2 topics, both: 2, latest: 1
                pub.service(0.05)
            time.sleep(0.2)
            sent = []
            for i in range(3):
                p = _preview(publisher=pub.publisher_id, seq=i, frame_index=i)
                assert pub.write_preview(p)
                sent.append(p)
            pub.publish_score(**_score())
            got_both = [both.recv(2.0) for _ in range(4)]
            got_plain = []
            while (m := plain.recv(0.5)) is not None:
                got_plain.append(m)
            got_latest = latest.recv(2.0)
        finally:
            for s in (plain, both, latest):
                s.close()
    kinds = [type(m).__name__ for m in got_both]
    assert kinds.count("Preview") == 3 and kinds.count("Score") == 1
    assert [m for m in got_both if isinstance(m, Preview)] == sent
    assert both.gap_count == 0  # previews count on their own: no gaps in the score sequence
    assert not any(isinstance(m, Preview) for m in got_plain) and any(isinstance(m, Score) for m in got_plain)
    assert got_latest is not None and not isinstance(got_latest, Preview)
    assert pub.preview_sent == 3 and pub.dropped == 0


def test_a_real_pipeline_publishes_previews_of_its_frames(free_tcp_endpoint):
    """Sweep source, the shipped model: previews arrive on their topic at <= fps, each the JPEG of
    the frame it names (compared with the frame itself), with that frame's ROI and the model's
    saliency grid; the score stream beside them has no gaps."""
    import threading

    from streamcad.config import config_from_dict
    from streamcad.pipeline import Pipeline
    from streamcad.sinks.memory import MemorySink
    from streamcad.sinks.preview import PreviewSink
    from streamcad.sources import open_source

    ep = free_tcp_endpoint
    cfg = config_from_dict({"frames": 45, "dashboard": False, "publish": {"endpoint": ep}})
    pub = Publisher(ep, stream="probe0")
    mem = MemorySink(wants_frames=True)
    src = open_source("sweep:", pace="native", fps=30.0, seed=2, loop=True)
    with Pipeline(cfg, source=src, publisher=pub,
                  sinks=[mem, PreviewSink(pub, fps=10, max_side=320, quality=90, input_size=160)]) as pipe, \
            Subscriber(ep, kinds=("score", "status", "preview")) as sub:
        time.sleep(0.3)
        t = threading.Thread(target=pipe.run, daemon=True)
        t.start()
        scores, previews = {}, []
        while len(scores) < 45 and (m := sub.recv(5.0)) is not None:
            if isinstance(m, Score):
                scores[m.frame_index] = m
            elif isinstance(m, Preview):
                previews.append(m)
        t.join(10)
        while (m := sub.recv(0.5)) is not None:  # the last preview may trail the last score
            if isinstance(m, Preview):
                previews.append(m)
    assert len(scores) == 45 and sub.gap_count == 0
    assert 10 <= len(previews) <= 16  # 1.5 s at 10 previews/s, give or take the ends
    assert [p.seq for p in previews] == list(range(previews[0].seq, previews[0].seq + len(previews)))
    frames = {i: img for i, _, img in mem.frames}
    for p in previews:
        s = scores[p.frame_index]
        assert p.roi == s.roi and p.t_capture_ns == s.t_capture_ns and p.publisher == s.publisher
        img = frames[p.frame_index]
        assert (p.frame_width, p.frame_height) == (img.shape[1], img.shape[0]) and max(p.width, p.height) == 320
        jpeg = cv2.imdecode(np.frombuffer(p.image, np.uint8), cv2.IMREAD_GRAYSCALE)
        ref = cv2.resize(img, (p.width, p.height), interpolation=cv2.INTER_AREA)
        assert np.abs(jpeg.astype(float) - ref).mean() < 2.0
        if s.probs is not None:
            assert p.saliency is not None and p.saliency.kind == "attention"
            grid = np.frombuffer(p.saliency.data, np.uint8).reshape(p.saliency.height, p.saliency.width)
            assert grid.max() == 255  # max-normalised attention
        else:
            assert p.saliency is None


def test_open_sinks_builds_the_preview_sink_from_config(free_tcp_endpoint):
    from streamcad.config import config_from_dict
    from streamcad.errors import StreamcadError
    from streamcad.messages import ScoreStream
    from streamcad.sinks import open_sinks
    from streamcad.sinks.preview import PreviewSink

    cfg = config_from_dict({"publish": {"endpoint": free_tcp_endpoint}, "preview": {"enabled": True, "fps": 5}})
    sinks = open_sinks(cfg, ScoreStream("probe0"), {})
    try:
        assert [s.name for s in sinks] == ["zmq", "preview"]
        prev = sinks[1]
        assert isinstance(prev, PreviewSink) and prev.publisher is sinks[0]
        assert prev.encoder.interval_ns == 200_000_000
        assert sinks[0].hwm == 4 * (30 + 5 + 1)  # the queue holds 4 s of scores + previews + statuses
    finally:
        for s in sinks:
            s.close()
    with pytest.raises(StreamcadError, match="preview.enabled: previews go out through the ZeroMQ publisher"):
        open_sinks(cfg, ScoreStream("probe0"), {}, only=["preview"])
