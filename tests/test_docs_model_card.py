"""The model card template (train/ship.py write_model_card) states the terms of the data the
weights were trained on: both datasets, and every video clip of the SSL pool with its licence as
recorded in ../shared/data/video/sectors.json; clips without a licence are named in a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="train/ship.py: needs the train extra")
from streamcad.train.ship import DATASET_TERMS, data_terms, write_model_card  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _report() -> dict:
    """The v1 recipe's ship report (the tiny SSL model shipped before the v2 recipe): the template under test."""
    return json.loads((REPO / "train" / "results" / "v1_shipped_default.json").read_text())


def test_card_lists_every_clip_with_its_licence_and_warns_on_unlicensed(data_root, tmp_path):
    terms = data_terms(data_root)
    sectors = {c["file"]: c for c in json.loads((data_root / "video" / "sectors.json").read_text())}
    clips = sorted(p.name for p in (data_root / "video").glob("*.mp4"))
    assert [c["file"] for c in terms["video_clips"]] == clips
    for c in terms["video_clips"]:
        assert c["licence"] == (sectors[c["file"]].get("licence") or sectors[c["file"]]["licence_note"])
    # the clips whose note says there is no licence, found independently here
    expect = sorted(f for f in clips if "no licence" in sectors[f].get("licence_note", "").lower()[:20])
    assert sorted(terms["unlicensed"]) == expect
    card = write_model_card({**_report(), "data_terms": terms}, tmp_path / "MODEL_CARD.md", "ab" * 32).read_text()
    section = card[card.index("## Data terms"):card.index("## Calibration")]
    for name, t in DATASET_TERMS.items():
        assert f"**{name}**" in section and t in section
    for c in terms["video_clips"]:
        assert f"`{c['file']}`: {c['licence']}" in section
    if expect:
        assert f"**Trained on {len(expect)} recording(s) without a licence**" in section
        assert all(f in section.split("without a licence")[1] for f in expect)


def test_an_older_report_still_states_the_dataset_terms(tmp_path):
    report = _report()
    report.pop("data_terms", None)
    card = write_model_card(report, tmp_path / "MODEL_CARD.md", "ab" * 32).read_text()
    section = card[card.index("## Data terms"):card.index("## Calibration")]
    assert all(t in section for t in DATASET_TERMS.values())
    assert "the clips were not recorded in this report" in section
    assert "without a licence" not in section


def test_a_packed_data_file_records_no_clip_list():
    terms = data_terms(None, data_npz="data160.npz")
    assert terms["video_clips"] is None and terms["datasets"] == DATASET_TERMS
