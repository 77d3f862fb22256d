"""Task loaders: row counts, prompt layouts, stop rules, answer extraction, errors.

Layouts and scoring run on the hand-made benchmark folder in tests/data and, when ADAFUSE_DATA names one, on the
real dev splits too; the row counts and particular rows of the dev splits are checked only against the latter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adafuse.cli import app
from adafuse.decoding.stopping import find_stop
from adafuse.errors import ConfigError, DataError
from adafuse.evaluation.metrics import gold_number, numeric_match
from adafuse.evaluation.tasks import TASK_NAMES, Item, Task, custom_task, load_task

ROWS = {"triviaqa": 1900, "nq": 1600, "squad": 500, "gsm8k": 300, "flores-en-de": 200, "flores-de-en": 200}


def _generate(task: Task, continuation: str) -> str:
    """What a decoder keeps of ``continuation`` under the task's stop rules, as the prediction string."""
    stop = find_stop(continuation, task.stop, task.stop_at_boxed)
    kept = continuation if stop is None else continuation[: stop.cut]
    return task.extract_answer(kept)


# ------------------------------------------------------------------------------------------------ loading


def test_task_names_are_the_six_benchmarks() -> None:
    assert set(TASK_NAMES) == set(ROWS)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_row_counts_match_readme(shared_data: Path, name: str) -> None:
    items = load_task(name, shared_data).items()
    assert len(items) == ROWS[name]
    assert [it.index for it in items] == list(range(ROWS[name]))
    assert all(it.question.strip() for it in items)


@pytest.mark.parametrize("name", ["triviaqa", "nq", "squad"])
def test_qa_golds_are_alias_lists(benchmark_dir: Path, name: str) -> None:
    task = load_task(name, benchmark_dir)
    assert task.kind == "qa"
    for it in task.items():
        assert isinstance(it.answer, list) and it.answer
        assert all(isinstance(a, str) for a in it.answer)


def test_first_triviaqa_item(shared_data: Path) -> None:
    first = load_task("triviaqa", shared_data).items(limit=1)[0]
    assert first == Item(
        index=0,
        question="Which Lloyd Webber musical premiered in the US on 10th December 1993?",
        answer=["Sunset Blvd", "West Sunset Boulevard", "Sunset Boulevard", "Sunset Bulevard", "Sunset Blvd."],
    )


def test_gsm8k_gold_numbers_extractable_for_every_row(shared_data: Path) -> None:
    items = load_task("gsm8k", shared_data).items()
    assert len(items) == 300
    for it in items:
        assert isinstance(it.answer, str)
        number = gold_number(it.answer)
        assert number is not None, it.answer
        # The gold's own number, boxed as a model would write it, scores as correct.
        assert numeric_match(f"The answer is \\boxed{{{number}}}", it.answer) == 1.0
    # Thousands separators in the gold are read as one number.
    assert "132000" in {gold_number(it.answer) for it in items}


def test_gsm8k_gold_numbers_of_the_hand_made_rows(fixture_data: Path) -> None:
    items = load_task("gsm8k", fixture_data).items()
    golds = [it.answer for it in items if isinstance(it.answer, str)]
    assert len(golds) == len(items) == 3
    # "Therefore, the answer is 11,250": the thousands separator is read as part of one number.
    assert [gold_number(g) for g in golds] == ["54", "11250", "49"]
    assert numeric_match("so the answer is \\boxed{11250}", golds[1]) == 1.0


def test_flores_items_carry_ids_and_string_references(benchmark_dir: Path) -> None:
    en_de = load_task("flores-en-de", benchmark_dir).items()
    de_en = load_task("flores-de-en", benchmark_dir).items()
    assert en_de and [it.id for it in en_de] == list(range(len(en_de)))
    # The two directions are the same sentence pairs, swapped.
    assert all(a.question == b.answer and a.answer == b.question for a, b in zip(en_de, de_en, strict=True))
    assert all(isinstance(it.answer, str) for it in en_de)


def test_offset_and_limit_are_a_window(benchmark_dir: Path) -> None:
    task = load_task("nq", benchmark_dir)
    everything = task.items()
    n = len(everything)
    window = task.items(offset=1, limit=2)
    assert [it.index for it in window] == [1, 2]
    assert window == everything[1:3]
    assert len(task.items(offset=n - 2, limit=10)) == 2 and task.items(offset=n - 2, limit=10) == everything[n - 2 :]
    assert task.items(offset=n + 100) == []
    assert task.items(limit=0) == []
    with pytest.raises(ValueError):
        task.items(offset=-1)


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("name", ["triviaqa", "nq"])
def test_qa_prompt_layout(benchmark_dir: Path, name: str) -> None:
    task = load_task(name, benchmark_dir)
    question = task.items(limit=1)[0].question
    prompt = task.build_prompt(question)
    instructions = (benchmark_dir / name / "prompt.txt").read_text(encoding="utf-8")
    assert prompt.startswith(instructions.rstrip())
    assert prompt.endswith(f"\n\nQuestion: {question}\nAnswer:")
    # The test question is spaced like the shots: one blank line between blocks, never two.
    assert "\n\n\nQuestion:" not in prompt
    assert prompt.count("\n\nQuestion: ") == instructions.count("Question: ") + 1


def test_squad_prompt_matches_its_examples_layout(benchmark_dir: Path) -> None:
    task = load_task("squad", benchmark_dir)
    question = task.items(limit=1)[0].question
    context, query = question.split("\n")
    prompt = task.build_prompt(question)
    assert prompt.endswith(f"\n\nQuestion:\n{context} {query}\nAnswer:")
    # Same shape as the shots in the prompt file: "Question:" alone on its line, then one line of text.
    block = prompt.rsplit("\n\nQuestion:\n", 1)[1]
    assert block.count("\n") == 1
    shots = task.prompt_text.count("Question:\n")
    assert shots >= 3 and prompt.count("\n\nQuestion:\n") == shots + 1


def test_gsm8k_prompt_layout(benchmark_dir: Path) -> None:
    task = load_task("gsm8k", benchmark_dir)
    question = task.items(limit=1)[0].question
    prompt = task.build_prompt(question)
    last_shot_end = task.prompt_text.rstrip().rsplit("\n", 1)[1]
    assert last_shot_end.startswith("The answer is \\boxed{")
    assert prompt.endswith(f"{last_shot_end}\n\n\nQuestion: {question}\nLet's think step by step\n")
    # Every block, the test question's included, is separated by two blank lines as in the file.
    shots = task.prompt_text.count("Question: ")
    assert shots >= 3 and prompt.count("\n\n\nQuestion: ") == shots


@pytest.mark.parametrize(
    ("name", "source", "target"), [("flores-en-de", "English", "German"), ("flores-de-en", "German", "English")]
)
def test_flores_prompt_layout(benchmark_dir: Path, name: str, source: str, target: str) -> None:
    task = load_task(name, benchmark_dir)
    sentence = task.items(limit=1)[0].question
    prompt = task.build_prompt(sentence)
    assert prompt.endswith(f":\n\n{source}: {sentence}\n{target}:")
    assert prompt.startswith(task.prompt_text.rstrip())
    assert prompt.startswith(f"Translate the {source} text below into {target}.") or prompt.startswith(
        f"Translate the following {source} sentences into {target}."
    )


# --------------------------------------------------------------------------------------- stops / answers


def test_stop_rules_per_task(fixture_data: Path) -> None:
    tasks = {name: load_task(name, fixture_data) for name in TASK_NAMES}
    assert tasks["triviaqa"].stop == ("\n",) and tasks["triviaqa"].max_new_tokens == 32
    assert tasks["squad"].max_new_tokens == 32
    assert tasks["gsm8k"].stop_at_boxed and tasks["gsm8k"].max_new_tokens == 320
    assert not any(tasks[n].stop_at_boxed for n in TASK_NAMES if n != "gsm8k")
    assert tasks["flores-de-en"].stop == ("\n",) and tasks["flores-de-en"].max_new_tokens == 160


def test_qa_generation_stops_at_end_of_line(fixture_data: Path) -> None:
    task = load_task("triviaqa", fixture_data)
    assert _generate(task, " George V.\n\nQuestion: Who wrote Hamlet?\nAnswer: Shakespeare.") == "George V"
    assert _generate(task, " Answer: Ludo (album).") == "Ludo (album)"
    assert task.correct(_generate(task, " the Beatles.\n"), ["Beatles"]) == 1.0


def test_squad_answer_on_the_line_after_answer_label(fixture_data: Path) -> None:
    task = load_task("squad", fixture_data)
    # The shots put the answer on its own line, so the continuation starts with a newline.
    assert _generate(task, "\nFrance\n\nQuestion:\nSome other context") == "France"
    assert _generate(task, "\nsouthern Italy\nQuestion:\nmore") == "southern Italy"
    assert _generate(task, " Richard I") == "Richard I"


def test_gsm8k_generation_stops_after_boxed_answer(fixture_data: Path) -> None:
    task = load_task("gsm8k", fixture_data)
    gold = "Therefore, the answer is 12"
    continuation = "6 + 6 = 12\nThe answer is \\boxed{12}\n\n\nQuestion: A farmer has 3 cows"
    prediction = _generate(task, continuation)
    assert prediction.endswith("\\boxed{12}")
    assert task.correct(prediction, gold) == 1.0
    # Without a box, the next question is cut off and the last number of the reasoning is the answer.
    unboxed = _generate(task, "6 + 6 = 12 dollars\nQuestion: 7 apples")
    assert task.correct(unboxed, gold) == 1.0


def test_flores_takes_first_line(fixture_data: Path) -> None:
    task = load_task("flores-en-de", fixture_data)
    assert _generate(task, " Er fügte hinzu.\nEnglish: next sentence") == "Er fügte hinzu."


@pytest.mark.parametrize("name", TASK_NAMES)
def test_scoring_golds_against_themselves_is_perfect(benchmark_dir: Path, name: str) -> None:
    task = load_task(name, benchmark_dir)
    items = task.items(limit=50)
    golds = [it.answer for it in items]
    predictions = [g[0] if isinstance(g, list) else g for g in golds]
    scores = task.score(predictions, golds)
    expected = {"qa": {"em", "f1"}, "math": {"accuracy"}, "translation": {"bleu", "chrf"}}[task.kind]
    assert set(scores) == expected
    assert all(v == pytest.approx(100.0) for v in scores.values())


# ------------------------------------------------------------------------------------------------- errors


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_corrupt_json_line_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"question": "q", "answer": ["a"]})
    data = _write(tmp_path / "broken.jsonl", [good, good, "", '{"question": "q", "answer": '])
    prompt = _write(tmp_path / "prompt.txt", ["Answer briefly."])
    task = custom_task(data, prompt)
    # Reading is streamed: the rows before the corrupt line load on their own.
    assert len(task.items(limit=2)) == 2
    with pytest.raises(DataError, match=r"broken\.jsonl:4: corrupt JSON"):
        task.items()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"question": "q"}, "'answer'"),
        ({"answer": ["a"]}, "'question'"),
        (["q", "a"], "JSON object"),
        ({"question": "q", "answer": []}, "no gold alias"),
        ({"question": "q", "answer": [1, 2]}, "list of strings"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, row: object, problem: str) -> None:
    good = json.dumps({"question": "q", "answer": "a"})
    data = _write(tmp_path / "rows.jsonl", [good, json.dumps(row)])
    task = custom_task(data, _write(tmp_path / "p.txt", ["x"]))
    with pytest.raises(DataError, match="rows.jsonl:2") as info:
        task.items()
    assert problem in str(info.value)


def test_math_row_without_final_number_is_rejected(tmp_path: Path) -> None:
    data = _write(
        tmp_path / "math.jsonl",
        [json.dumps({"question": "1+1?", "answer": "#### 2"}), json.dumps({"question": "?", "answer": "none"})],
    )
    task = custom_task(data, _write(tmp_path / "p.txt", ["Solve."]), kind="math")
    assert task.items(limit=1)[0].answer == "#### 2"
    with pytest.raises(DataError, match=r"math\.jsonl:2: .*final number"):
        task.items()


def test_custom_task_defaults(tmp_path: Path) -> None:
    data = _write(tmp_path / "mine.jsonl", [json.dumps({"question": "Capital of France?", "answer": "Paris"})])
    prompt = _write(tmp_path / "p.txt", ["Answer the question.", ""])
    task = custom_task(data, prompt)
    assert (task.name, task.kind, task.stop, task.max_new_tokens) == ("mine", "qa", ("\n",), 32)
    item = task.items()[0]
    assert item.answer == ["Paris"]  # a plain string gold becomes a one-alias list
    assert task.build_prompt(item.question) == "Answer the question.\n\nQuestion: Capital of France?\nAnswer:"
    math = custom_task(data, prompt, kind="math", max_new_tokens=100)
    assert math.stop_at_boxed and math.max_new_tokens == 100
    assert math.build_prompt("2+2?").endswith("\n\n\nQuestion: 2+2?\nLet's think step by step\n")
    with pytest.raises(ConfigError, match="unknown task kind"):
        custom_task(data, prompt, kind="poetry")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="missing.jsonl"):
        custom_task(tmp_path / "missing.jsonl", prompt)


def test_unknown_task_lists_known_names(fixture_data: Path) -> None:
    with pytest.raises(DataError, match="unknown task 'trivia'") as info:
        load_task("trivia", fixture_data)
    assert all(name in str(info.value) for name in TASK_NAMES)


def test_missing_data_dir_says_how_to_point_at_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_task("triviaqa", missing)
    message = str(info.value)
    assert str(missing) in message
    assert "--data-dir" in message and "ADAFUSE_DATA" in message


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "prompt.txt").write_text("p", encoding="utf-8")
    with pytest.raises(DataError, match="ADAFUSE_DATA") as info:
        load_task("gsm8k", tmp_path)
    assert str(tmp_path / "gsm8k" / "dev.jsonl") in str(info.value)


def test_data_dir_defaults_to_env_var(fixture_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAFUSE_DATA", str(fixture_data))
    assert load_task("squad").data_path == fixture_data / "squad" / "dev.jsonl"
    monkeypatch.setenv("ADAFUSE_DATA", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="absent"):
        load_task("squad")


def test_eval_without_the_data_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAFUSE_DATA", str(tmp_path / "absent"))
    result = CliRunner().invoke(app, ["eval", "--task", "triviaqa", "--limit", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("error:") == 1
    assert "absent" in result.output and "ADAFUSE_DATA" in result.output and "Traceback" not in result.output
