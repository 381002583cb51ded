"""The per-frame processor (streamcad.processor) is what the pipeline runs: fed the frames a real
pipeline delivered, a fresh processor on the calling thread computes the very same scores."""

from __future__ import annotations

import numpy as np

from streamcad.config import config_from_dict
from streamcad.lesion import input_to_frame
from streamcad.manifest import load_model
from streamcad.pipeline import DEFAULT_MODEL, Pipeline
from streamcad.processor import FrameProcessor
from streamcad.sinks import MemorySink
from streamcad.sources.base import Frame


def _cfg():
    return config_from_dict({"source": {"uri": "sweep:", "pace": "none", "fps": 30.0, "seed": 7},
                             "model": {"path": str(DEFAULT_MODEL), "threads": 1}, "frames": 40, "dashboard": False})


def test_the_processor_alone_gives_the_pipelines_scores():
    cfg = _cfg()
    kept = MemorySink(wants_frames=True)
    with Pipeline(cfg, sinks=[kept]) as pipe:
        pipe.run()  # threaded: prepare, infer and publish on their own threads
    assert len(kept.scores) == 40
    with load_model(DEFAULT_MODEL, intra_op_threads=1) as model:
        proc = FrameProcessor(cfg, model)
        for (index, t_ns, image), score in zip(kept.frames, kept.scores, strict=True):
            item, res = proc.process(Frame(image, t_ns, index))
            want = None if score.probs is None else (score.probs.normal, score.probs.benign, score.probs.malignant)
            assert item.index == score.frame_index and item.probs == want
            assert sorted(item.flags) == score.flags and item.roi == score.roi
            assert item.saliency_peak == score.saliency_peak
            got_lesion = item.lesion and (tuple(item.lesion["box"]), item.lesion["confidence"])
            want_lesion = score.lesion and (tuple(score.lesion.box), score.lesion.confidence)
            assert got_lesion == want_lesion
            assert res.state in ("suspicious", "clear", "no_lesion", "flagged")


def test_the_saliency_peak_is_the_argmax_cell_mapped_back_through_the_letterbox():
    cfg = _cfg()
    with load_model(DEFAULT_MODEL, intra_op_threads=1) as model:
        proc = FrameProcessor(cfg, model)
        S = model.spec.size
        roi = (100, 50, 400, 300)  # wider than tall: padding above and below in the model input
        sal = np.zeros((10, 10), np.float32)
        sal[7, 2] = 1.0
        x, y = proc.saliency_peak(sal, roi)
        u, v = (2 + 0.5) * S / 10, (7 + 0.5) * S / 10
        fx, fy = input_to_frame(u, v, roi, S)
        assert (x, y) == (int(fx), int(fy))
        assert 100 <= x < 500 and 50 <= y < 350
        sal[:] = 0
        sal[0, 0] = 1.0  # the top row lies in the padding above the image: y is clipped to the ROI
        x, y = proc.saliency_peak(sal, roi)
        fx, fy = input_to_frame(0.5 * S / 10, 0.5 * S / 10, roi, S)
        assert fy < 50 and (x, y) == (int(fx), 50)
