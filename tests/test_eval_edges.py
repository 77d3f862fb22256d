"""Evaluation edges: an empty selection and an output directory that cannot be written are one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fakes import EOS, ScriptedMember, table

from adafuse.ensemble import Ensemble
from adafuse.errors import DataError
from adafuse.evaluation.runner import run_eval
from adafuse.evaluation.tasks import custom_task


def _task(tmp_path: Path, rows: int):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": ["a"]}) + "\n" for i in range(rows)))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer briefly.\n")
    return custom_task(data, prompt, name="tiny")


def _ensemble() -> Ensemble:
    return Ensemble([ScriptedMember("a", [" a"], table({}, {" a": 0.5, EOS: 0.45}), prompt="")])


@pytest.mark.parametrize(("rows", "offset", "limit"), [(0, 0, None), (3, 3, None), (3, 7, 2), (3, 0, 0)])
def test_an_empty_selection_is_an_error_not_a_run_scoring_zero(tmp_path, rows, offset, limit):
    task = _task(tmp_path, rows)
    with pytest.raises(DataError, match=rf"nothing to evaluate: offset {offset}.* of its {rows}"):
        run_eval(task, _ensemble(), out_dir=tmp_path / "run", offset=offset, limit=limit, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_output_directory_without_write_permission_is_a_one_line_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(DataError, match="cannot write the run to"):
        run_eval(_task(tmp_path, 2), _ensemble(), out_dir=locked / "run", progress=False)


def test_an_output_path_under_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match=r"cannot write the run to .*file/run: Not a directory"):
        run_eval(_task(tmp_path, 2), _ensemble(), out_dir=blocker / "run", progress=False)
