import cv2
import numpy as np

from streamcad.benchmarks.naive import InlineSource
from streamcad.sources import open_source
from streamcad.sources.sweep import SAMPLE_DIR, SweepRenderer


def test_inline_sweep_frames_equal_the_renderer():
    src = InlineSource(open_source("sweep:", pace="none", seed=4, loop=True))
    src.start()
    ref = SweepRenderer(SAMPLE_DIR, seed=4)
    for i in range(3):
        f = src.read()
        r = ref.render(i)
        assert f.index == i and f.label == r.label and f.roi == r.roi
        assert np.array_equal(f.image, r.image)
    src.close()


def test_inline_file_reads_every_frame_in_order(tmp_path):
    path = tmp_path / "v.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for i in range(6):
        vw.write(np.full((48, 64, 3), 40 * i, np.uint8))
    vw.release()
    src = InlineSource(open_source(f"file:{path}", pace="none"))
    src.start()
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    assert [f.index for f in frames] == list(range(6))
    assert [round(float(f.image.mean()) / 40) for f in frames] == list(range(6))
    assert src.ended and src.stats.frames_grabbed == 6
    assert all(b.t_capture_ns > a.t_capture_ns for a, b in zip(frames, frames[1:], strict=False))
