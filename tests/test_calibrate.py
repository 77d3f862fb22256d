"""Calibrated member weights: the rule, the file, reloading it, and determinism."""

from __future__ import annotations

import json

import pytest
from fakes import ScriptedMember
from test_runner import QA, WORDS, answer_script, write_task

from adafuse.ensemble import Ensemble
from adafuse.errors import ConfigError, DataError
from adafuse.evaluation.calibrate import calibrate, load_weights, weights_from_scores


def ensemble() -> Ensemble:
    right = {q: a for q, (_, a) in QA.items()}
    good = ScriptedMember("good", WORDS, answer_script(right, [], WORDS))
    # A member that never knows: its calibration score is zero, so it keeps only the add-one share.
    bad = ScriptedMember("bad", ["\n"], answer_script({}, [], []))
    return Ensemble([good, bad])


def test_the_weight_rule_is_add_one_smoothed_scores():
    assert weights_from_scores([80.0, 0.0]) == pytest.approx((81 / 82, 1 / 82), abs=1e-6)
    assert weights_from_scores([0.0, 0.0, 0.0]) == pytest.approx((1 / 3,) * 3, abs=1e-6)
    with pytest.raises(ConfigError):
        weights_from_scores([-1.0, 2.0])


def test_calibration_writes_weights_that_reload_and_repeat(tmp_path):
    task = write_task(tmp_path)
    record = calibrate(task, ensemble(), ["good", "bad"], tmp_path / "cal", limit=5, progress=False)
    assert record["scores"] == [80.0, 0.0]  # "good" gets 4 of 5 right ("five" is wrong), "bad" none
    assert record["weights"] == pytest.approx([81 / 82, 1 / 82], abs=1e-6)
    path = tmp_path / "cal" / "weights.json"
    assert load_weights(path, ["good", "bad"]) == tuple(record["weights"])
    # A second calibration from scratch gives the same file, byte for byte.
    again = calibrate(task, ensemble(), ["good", "bad"], tmp_path / "cal2", limit=5, progress=False)
    assert json.dumps(again) == json.dumps(record)
    assert (tmp_path / "cal2" / "weights.json").read_text() == path.read_text()


def test_weights_file_must_match_the_members(tmp_path):
    task = write_task(tmp_path)
    calibrate(task, ensemble(), ["good", "bad"], tmp_path / "cal", limit=2, progress=False)
    with pytest.raises(ConfigError, match="holds weights for"):
        load_weights(tmp_path / "cal" / "weights.json", ["bad", "good"])
    with pytest.raises(DataError, match="not found"):
        load_weights(tmp_path / "nope.json", ["good", "bad"])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(DataError, match="not a weights file"):
        load_weights(tmp_path / "junk.json", ["good", "bad"])
