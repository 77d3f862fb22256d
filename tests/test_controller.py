"""The learned controller: collecting, fitting (deterministic), the file, the member check, and its decisions.

Decision logic runs on scripted members whose signals point at one member; the shipped controller runs on the
three real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import EOS, ScriptedMember

from adafuse.config import DecodeConfig
from adafuse.control.fit import Example, Group, collect, fit_choice, fit_controller, neutral
from adafuse.control.model import BUILTIN, Controller, load_controller
from adafuse.control.signals import RequestKind, pick_feature_names, repeats, route_feature_names
from adafuse.ensemble import Ensemble
from adafuse.errors import ConfigError
from adafuse.evaluation.tasks import custom_task

N_ROWS = 30


class Answerer(ScriptedMember):
    """Answers ``What is A plus B?`` with ``" S.\\n\\n"``: right (``error=0``), or off by ``error`` on the rows where
    ``wrong(row)`` holds; ``sure`` is the probability of each next character (its margin signal)."""

    def __init__(self, name: str, error: int, wrong, sure: float) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, [], self.next_piece, prompt="")
        self.error, self.wrong, self.sure = error, wrong, sure

    def next_piece(self, text: str) -> dict[str, float]:
        if "\nAnswer:" not in text:
            return {}
        head, answer = text.rsplit("\nAnswer:", 1)
        a, b = (int(v) for v in head.rsplit("What is ", 1)[1].rstrip("?").split(" plus "))
        total = a + b + (self.error if self.wrong(a) else 0)
        target = f" {total}.\n\nQuestion"
        if target.startswith(answer) and len(answer) < len(target):
            return {target[len(answer)]: self.sure}
        return {EOS: 0.99}


def members() -> list[ScriptedMember]:
    return [
        Answerer("oracle", 0, lambda a: False, 0.9),
        Answerer("sloppy", 1, lambda a: a % 3 != 0, 0.5),
        Answerer("wrong", 2, lambda a: True, 0.5),
    ]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sums")
    rows = [{"question": f"What is {a} plus {a + 7}?", "answer": [str(2 * a + 7)]} for a in range(N_ROWS)]
    (root / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "prompt.txt").write_text("Question: What is 1 plus 2?\nAnswer: 3.\n")
    return custom_task(root / "dev.jsonl", root / "prompt.txt", name="sums")


def collected(task, work: Path) -> list[Example]:  # type: ignore[no-untyped-def]
    ens = Ensemble(members())
    return collect(task, "sums", ens, ens.names, work, 0, N_ROWS, progress=False)


def fitted(task, work: Path) -> Controller:  # type: ignore[no-untyped-def]
    found = collected(task, work)
    names = [m.name for m in members()]
    ids = [{"name": n, "fingerprint": None} for n in names]
    return fit_controller(ids, names, found[:20], found[20:], {"rows": {"sums": {"fit": [0, 20], "tune": [20, 30]}}})


def test_collecting_records_every_members_line_and_its_outcome(task, tmp_path):
    found = collected(task, tmp_path)
    assert len(found) == N_ROWS
    ex = found[1]
    # Row 1: 1 + 8 = 9; sloppy says 10 and wrong 11, each its own candidate.
    assert ex.prediction == ["9", "10", "11"]
    assert ex.route.y.tolist() == [1.0, 0.0, 0.0] and ex.own == [0, 1, 2]
    assert ex.route.x.shape == (3, len(route_feature_names(["oracle", "sloppy", "wrong"])))


def test_fitting_is_deterministic_and_learns_to_trust_the_member_the_signals_point_at(task, tmp_path):
    first = fitted(task, tmp_path / "a")
    again = fitted(task, tmp_path / "b")
    assert first.to_json() == again.to_json()
    path = tmp_path / "controller.json"
    first.save(path)
    ens = Ensemble(members())
    result = ens.generate(task.build_prompt("What is 40 plus 47?"), DecodeConfig(controller=str(path), stop=("\n",)))
    assert result.text == " 87."
    assert result.rounds[0].signals["routed"] == "oracle"
    assert result.telemetry.benched == ["sloppy", "wrong"]
    assert result.telemetry.controller == first.digest
    assert first.fit["quality"]["tune"] == 1.0


def test_a_kind_of_request_it_was_not_fitted_on_is_left_to_todays_rule(task, tmp_path):
    ctl = fitted(task, tmp_path)
    assert ctl.kinds == [[0.0, 0.0, 0.0, 0.0, 0.0]]  # the sums: no evidence the scripted members can give
    path = tmp_path / "controller.json"
    ctl.save(path)
    maths = "Question: What is 12 plus 30?\nLet's think step by step\n"
    result = Ensemble(members()).generate(maths, DecodeConfig(controller=str(path), max_new_tokens=4))
    assert result.rounds[0].signals["abstained"] is True
    assert all(r.unit == "word" for r in result.rounds)


def test_the_file_round_trips(task, tmp_path):
    ctl = fitted(task, tmp_path)
    text = ctl.to_json()
    assert Controller.from_dict(json.loads(text)).to_json() == text
    path = tmp_path / "c.json"
    ctl.save(path)
    assert load_controller(path).to_json() == text


def test_members_it_was_not_fitted_for_are_refused_in_one_line(tmp_path):
    path = tmp_path / "c.json"
    neutral(["oracle", "sloppy", "wrong"]).save(path)
    others = members()
    others[2].name = "other"
    with pytest.raises(ConfigError, match=r"fitted for members \['oracle', 'sloppy', 'wrong'\], not .*'other'"):
        Ensemble(others).generate("Question: What is 1 plus 2?\nAnswer:", DecodeConfig(controller=str(path)))


def test_other_weights_under_the_same_name_are_refused(tmp_path):
    class Weighed(Answerer):
        def fingerprint(self) -> str:
            return "sha256:other"

    ctl = neutral(["oracle", "sloppy", "wrong"])
    ctl.members[0]["fingerprint"] = "sha256:mine"
    path = tmp_path / "c.json"
    ctl.save(path)
    swapped = [Weighed("oracle", 0, lambda a: False, 0.9), *members()[1:]]
    with pytest.raises(ConfigError, match=r"other weights of members \['oracle'\]"):
        Ensemble(swapped).generate("Question: What is 1 plus 2?\nAnswer:", DecodeConfig(controller=str(path)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "cannot read it as JSON"),
        ('{"format": "other"}', "not an adafuse controller file"),
        ('{"format": "adafuse-controller", "version": 99}', "version 99"),
        ('{"format": "adafuse-controller", "version": 1, "route": {}}', "malformed controller file"),
    ],
)
def test_a_bad_controller_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_controller(path)
    with pytest.raises(ConfigError, match="No such file"):
        load_controller(tmp_path / "missing.json")


def test_the_fit_is_a_convex_optimum_unchanged_by_the_order_of_its_groups():
    rng = np.random.default_rng(0)
    groups = [Group(rng.normal(size=(3, 4)), rng.uniform(size=3)) for _ in range(40)]
    names = ["a", "b", "c", "d"]
    one, two = fit_choice(groups, names, 0.1), fit_choice(groups[::-1], names, 0.1)
    assert np.allclose(one.weights, two.weights, atol=1e-8)
    # Groups whose options all score alike teach nothing.
    flat = [Group(g.x, np.ones(3)) for g in groups]
    with pytest.raises(Exception, match="nothing to learn"):
        fit_choice(flat, names, 0.1)


def test_signals_of_a_request_and_a_candidate():
    assert RequestKind.of("Q: a\nA: b\n\nQuestion: x\nAnswer:", "answers").flags == (1, 0, 0, 0, 0)
    assert RequestKind.of("Question: Wie heißt die Stadt?\nAnswer:", None).flags[3] == 1
    assert RequestKind.of("Question: 12 + 30 = ?\nLet's think step by step\n", None).flags[2] == 1
    assert repeats("", " 1.1.1.1.1.1.1.1.1.1") > 0.7
    assert repeats("", " The capital of France is Paris.") == 0.0
    assert repeats("Paris is the capital.", " Paris is the capital.") > 0.9
    assert len(pick_feature_names(["a", "b"])) == 2 + 2 * 5 + 2 + 8


@pytest.mark.models
def test_the_shipped_controller_loads_and_decides_on_all_six_task_prompts(zoo_members, fixture_data):
    from adafuse.evaluation.runner import task_config
    from adafuse.evaluation.tasks import TASK_NAMES, load_task

    ctl = load_controller("builtin")
    assert ctl.names == [m.name for m in zoo_members] and BUILTIN.is_file()
    ens = Ensemble(zoo_members)
    for name in TASK_NAMES:
        task = load_task(name, fixture_data)
        item = task.items(0, 1)[0]
        cfg = task_config(DecodeConfig(controller="builtin", max_rounds=3), task)
        result = ens.generate(task.build_prompt(item.question), cfg)
        signals = result.rounds[0].signals
        assert result.finish_reason in ("stop", "eos", "length"), name
        if name == "gsm8k":
            # Maths was not among its fit rows: today's rule decides (the evidence trusts Qwen-Coder alone).
            assert signals["abstained"] and result.telemetry.benched == ["smollm2-135m", "gemma3-270m"]
            continue
        route = signals["route"]
        assert sorted(route) == sorted(ens.names) and abs(sum(route.values()) - 1) < 1e-9, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "nq", "--rows", "nq=5:3:9"], "need 0 <= START < FIT_END < TUNE_END"),
        (["--tasks", "nq", "--rows", "nq=1:2"], "write FORM=START:FIT_END:TUNE_END"),
        (["--tasks", "mine"], "no rows for mine"),
    ],
)
def test_fit_refuses_bad_rows_in_one_line(tmp_path, args, message):
    from test_cli import adafuse, assert_one_line_error

    assert_one_line_error(adafuse("fit", "--out", str(tmp_path / "c.json"), *args), message)


@pytest.mark.models
def test_a_missing_or_mismatched_controller_is_one_line_on_the_command_line(tmp_path):
    from test_cli import adafuse, assert_one_line_error

    assert_one_line_error(adafuse("generate", "Q", "--controller", str(tmp_path / "none.json")), "No such file")
    neutral(["oracle", "sloppy", "wrong"]).save(tmp_path / "other.json")
    proc = adafuse("generate", "Q", "--controller", str(tmp_path / "other.json"))
    assert_one_line_error(proc, "fitted for members ['oracle', 'sloppy', 'wrong']")
