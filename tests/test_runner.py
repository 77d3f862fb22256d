"""The evaluation runner and the method comparison: files, resume after a kill, refusing to mix runs, failed
items, method labels, the report and the plot. Scripted members make these fast and exact; one test runs
the real built-in models."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import EOS, ScriptedMember
from typer.testing import CliRunner

from adafuse import __version__
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.errors import ConfigError, DataError, MemberError
from adafuse.evaluation import metrics
from adafuse.evaluation.compare import (
    FRONTIER,
    REPORT,
    MethodSpec,
    bootstrap_interval,
    parse_label,
    run_compare,
    split_methods,
)
from adafuse.evaluation.runner import (
    MANIFEST,
    PREDICTIONS,
    SUMMARY,
    LazyEnsemble,
    read_predictions,
    run_eval,
)
from adafuse.evaluation.tasks import Task, custom_task, load_task

PROMPT = "Answer each question.\n\nQuestion: What is one plus one?\nAnswer: two\n"

# question -> (gold aliases, what the scripted members answer)
QA = {
    "What is the capital of France?": (["Paris"], "Paris"),
    "What is the capital of Italy?": (["Rome"], "Rome"),
    "Who wrote Hamlet?": (["Shakespeare", "William Shakespeare"], "Shakespeare"),
    "What color is the sky?": (["blue"], "blue"),
    "What is two plus two?": (["four"], "five"),  # the members get this one wrong
}
QUESTIONS = list(QA)
N = len(QA)

WORDS = [" Paris", " Rome", " Shakespeare", " blue", " five", "\n", "Question", "Answer", " the", " is", " of"]


def answer_script(
    answers: dict[str, str],
    seen: list[str],
    pieces: list[str],
    kill_on: str | None = None,
    fail_on: str | None = None,
    hang_on: tuple[str, Path] | None = None,
) -> Callable[[str], dict[str, float]]:
    """A member that answers each question confidently with ``answers[question]`` and then a newline.

    It reads the question from the prompt text itself (the member's ``prompt`` is empty, so the script sees
    everything), records each question it is first asked about, raises KeyboardInterrupt on ``kill_on``
    (what a kill looks like to the runner) and a MemberError on ``fail_on``. On ``hang_on = (question, path)``
    it creates ``path`` and hangs, so another process can kill it there for real.
    """

    def script(text: str) -> dict[str, float]:
        head, _, generated = text.rpartition("\nAnswer:")
        question = head.rpartition("Question: ")[2]
        if question == kill_on:
            raise KeyboardInterrupt
        if hang_on is not None and question == hang_on[0]:
            hang_on[1].touch()
            time.sleep(120)
        if question == fail_on:
            raise MemberError("alpha", "connection refused")
        if not generated and (not seen or seen[-1] != question):
            seen.append(question)
        target = " " + answers.get(question, "no idea") + "\n"
        rest = target[len(generated) :] if target.startswith(generated) else ""
        if not rest:
            return {EOS: 0.99}
        piece = next((w for w in pieces if rest.startswith(w)), rest[0])
        return {piece: 0.95}

    return script


class Zoo:
    """Builds two-member scripted ensembles with different tokenizers, and remembers what they were asked."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.built = 0

    def ensemble(
        self,
        kill_on: str | None = None,
        fail_on: str | None = None,
        n_ctx: int = 4096,
        hang_on: tuple[str, Path] | None = None,
    ) -> Ensemble:
        self.built += 1
        answers = {q: a for q, (_, a) in QA.items()}
        alpha = answer_script(answers, self.seen, WORDS, kill_on, fail_on, hang_on)
        words = ScriptedMember("alpha", WORDS, alpha, n_ctx=n_ctx)
        # Beta tokenizes by characters only: a different tokenizer, so fusion works across tokenizations.
        chars = ScriptedMember("beta", ["\n"], answer_script(answers, [], [], kill_on, fail_on), n_ctx=n_ctx)
        return Ensemble([words, chars])


def write_task(tmp_path: Path, rows: dict[str, tuple[list[str], str]] = QA, kind: str = "qa") -> Task:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": g}) + "\n" for q, (g, _) in rows.items()))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    return custom_task(data, prompt, kind=kind, name="tiny")  # type: ignore[arg-type]


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return write_task(tmp_path)


@pytest.fixture
def zoo() -> Zoo:
    return Zoo()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------- files


def test_run_writes_one_line_per_item_and_a_summary(tmp_path, task, zoo):
    out = tmp_path / "run"
    summary = run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)

    recs = lines(out / PREDICTIONS)
    assert [r["index"] for r in recs] == list(range(N))
    for rec, question in zip(recs, QUESTIONS, strict=True):
        assert rec.keys() >= {
            "index",
            "question",
            "gold",
            "prediction",
            "raw",
            "correct",
            "finish_reason",
            "rounds",
            "telemetry",
        }
        assert rec["question"] == question and rec["gold"] == QA[question][0]
        assert rec["raw"] == " " + QA[question][1]  # the "\n" stop string is cut off
        assert rec["prediction"] == QA[question][1]
        assert rec["correct"] == (1.0 if question != "What is two plus two?" else 0.0)
        assert rec["finish_reason"] == "stop" and rec["rounds"] >= 1 and "error" not in rec
        assert {m["name"] for m in rec["telemetry"]["members"]} == {"alpha", "beta"}

    on_disk = json.loads((out / SUMMARY).read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary.keys() >= {"task", "method", "models", "config", "n", "metrics", "wall_seconds", "telemetry"}
    assert summary["task"] == "tiny" and summary["method"] == "adafuse" and summary["models"] == ["alpha", "beta"]
    assert summary["n"] == N and summary["errors"] == 0 and summary["complete"]
    assert summary["metrics"]["em"] == pytest.approx(80.0) and summary["metrics"]["f1"] == pytest.approx(80.0)
    # The task's stop rules and budget went into the decoding config.
    assert summary["config"]["stop"] == ["\n"] and summary["config"]["max_new_tokens"] == 32
    tel = summary["telemetry"]
    per_member = {name: m["tokens_evaluated"] for name, m in tel["members"].items()}
    assert per_member["alpha"] > 0 and per_member["beta"] > 0
    assert tel["tokens_evaluated"] == sum(per_member.values())
    assert tel["forward_calls"] == sum(m["forward_calls"] for m in tel["members"].values())
    assert tel["rounds"] == sum(r["rounds"] for r in recs)
    assert tel["fast_path_rate"] == pytest.approx(tel["fast_path_rounds"] / tel["rounds"])
    assert tel["fusion_rate"] == pytest.approx(tel["fused_rounds"] / tel["rounds"])
    assert tel["fast_path_rate"] + tel["fusion_rate"] == pytest.approx(1.0)
    assert tel["tokens_per_output_token"] == pytest.approx(tel["tokens_evaluated"] / tel["output_tokens"])
    assert summary["wall_seconds"] >= tel["generation_seconds"] > 0


def test_progress_bar_shows_the_running_score(tmp_path, task, zoo, capsys):
    run_eval(task, zoo.ensemble(), DecodeConfig(), tmp_path / "run", progress=True, label="my-label")
    err = capsys.readouterr().err
    assert "my-label" in err and f"{N}/{N}" in err and "em 80.0" in err


def test_offset_and_limit_select_items_and_the_summary_covers_only_them(tmp_path, task, zoo):
    summary = run_eval(task, zoo.ensemble(), DecodeConfig(), tmp_path / "run", offset=3, limit=10, progress=False)
    assert [r["index"] for r in lines(tmp_path / "run" / PREDICTIONS)] == [3, 4]
    assert summary["n"] == 2 and summary["metrics"]["em"] == pytest.approx(50.0)


# ------------------------------------------------------------------------------------------- resume


def test_a_run_killed_mid_way_resumes_without_losing_or_repeating_items(tmp_path, task, zoo):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_eval(task, zoo.ensemble(kill_on=QUESTIONS[2]), DecodeConfig(), out, progress=False)
    assert [r["index"] for r in lines(out / PREDICTIONS)] == [0, 1]
    assert not (out / SUMMARY).exists()  # no summary claiming to describe a half-done run

    zoo.seen.clear()
    summary = run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)
    assert zoo.seen == QUESTIONS[2:]  # only the missing items were generated
    indices = [r["index"] for r in lines(out / PREDICTIONS)]
    assert sorted(indices) == list(range(N)) and len(indices) == len(set(indices))
    assert summary["n"] == N and summary["metrics"]["em"] == pytest.approx(80.0)


def test_a_process_killed_with_sigkill_resumes_and_held_the_directory_meanwhile(tmp_path, task, zoo):
    out, marker = tmp_path / "run", tmp_path / "hanging"
    driver = (
        f"import sys; from pathlib import Path; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_runner import QUESTIONS, Zoo\n"
        "from adafuse.config import DecodeConfig\n"
        "from adafuse.evaluation.tasks import custom_task\n"
        f"task = custom_task({str(task.data_path)!r}, {str(task.prompt_path)!r}, name='tiny')\n"
        f"ens = Zoo().ensemble(hang_on=(QUESTIONS[3], Path({str(marker)!r})))\n"
        "from adafuse.evaluation.runner import run_eval\n"
        f"run_eval(task, ens, DecodeConfig(), {str(out)!r}, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the driver never reached item 3"
            time.sleep(0.05)
        with pytest.raises(ConfigError, match="another evaluation is writing"):
            run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)
    finally:
        proc.kill()
        proc.wait()
    assert [r["index"] for r in lines(out / PREDICTIONS)] == [0, 1, 2]

    summary = run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)
    assert zoo.seen == QUESTIONS[3:]
    assert [r["index"] for r in lines(out / PREDICTIONS)] == list(range(N))
    assert summary["n"] == N and summary["metrics"]["em"] == pytest.approx(80.0)


def test_a_torn_last_line_is_discarded_and_redone(tmp_path, task, zoo):
    out = tmp_path / "run"
    run_eval(task, zoo.ensemble(), DecodeConfig(), out, limit=3, progress=False)
    path = out / PREDICTIONS
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + 25])  # a kill in the middle of writing item 2's line
    assert sorted(read_predictions(path)) == [0, 1]

    zoo.seen.clear()
    summary = run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)
    assert zoo.seen == QUESTIONS[2:]
    recs = lines(path)  # every line parses: the torn tail was cut, not glued to
    assert [r["index"] for r in recs] == list(range(N))
    assert summary["n"] == N and summary["errors"] == 0


def test_garbage_in_the_middle_of_the_file_is_an_error_not_a_guess(tmp_path, task, zoo):
    out = tmp_path / "run"
    run_eval(task, zoo.ensemble(), DecodeConfig(), out, limit=3, progress=False)
    path = out / PREDICTIONS
    rows = path.read_text().splitlines(keepends=True)
    path.write_text(rows[0] + "{not json\n" + "".join(rows[1:]))
    with pytest.raises(DataError, match=r"predictions.jsonl:2: corrupt line"):
        run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)


def test_a_finished_run_loads_no_models(tmp_path, task, zoo):
    out = tmp_path / "run"
    first = run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)

    def factory() -> Ensemble:
        raise AssertionError("models loaded although every item was done")

    again = run_eval(task, factory, DecodeConfig(), out, progress=False, models=["alpha", "beta"])
    assert again["metrics"] == first["metrics"] and again["n"] == N
    assert again["telemetry"]["tokens_evaluated"] == first["telemetry"]["tokens_evaluated"]


def test_a_lazy_ensemble_loads_once_when_there_is_work(tmp_path, task, zoo):
    with LazyEnsemble(loader=zoo.ensemble) as lazy:
        run_eval(task, lazy, DecodeConfig(), tmp_path / "a", limit=2, progress=False, models=["alpha", "beta"])
        run_eval(task, lazy, DecodeConfig(), tmp_path / "b", limit=2, progress=False, models=["alpha", "beta"])
        assert lazy.loaded and zoo.built == 1
    assert not lazy.loaded


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(config=DecodeConfig(theta=0.5)), "config.theta: 0.7 now 0.5"),
        (dict(config=DecodeConfig(method="token")), "method: 'adafuse' now 'token'"),
        (dict(models=["alpha", "gamma"]), "models: \\['alpha', 'beta'\\] now \\['alpha', 'gamma'\\]"),
        (dict(chat=True), "chat: False now True"),
    ],
)
def test_refuses_to_mix_a_different_run_into_the_directory(tmp_path, task, zoo, change, message):
    out = tmp_path / "run"
    run_eval(task, zoo.ensemble(), DecodeConfig(), out, limit=2, progress=False)
    before = (out / PREDICTIONS).read_bytes()
    kwargs = {"config": DecodeConfig(), "models": None, "chat": False, **change}
    with pytest.raises(ConfigError, match=f"already holds a different run.*{message}") as exc:
        run_eval(task, zoo.ensemble(), out_dir=out, progress=False, **kwargs)
    assert "\n" not in str(exc.value)
    assert (out / PREDICTIONS).read_bytes() == before


def test_a_run_resumes_when_the_version_and_the_options_are_equal(tmp_path, task, zoo):
    out = tmp_path / "run"
    cfg = DecodeConfig(theta=1, weights=(1, 2), granularity="adaptive")
    run_eval(task, zoo.ensemble(), cfg, out, limit=2, progress=False)
    identity = json.loads((out / MANIFEST).read_text())["identity"]
    assert identity["adafuse"] == __version__
    recorded = {k: identity["config"][k] for k in ("theta", "weights", "granularity", "min_weight")}
    assert recorded == {"theta": 1.0, "weights": [1.0, 2.0], "granularity": "adaptive", "min_weight": 0.05}
    # The same options written another way (1.0 for 1, a list for a tuple) are the same run: it resumes.
    again = DecodeConfig(theta=1.0, weights=[1.0, 2.0], granularity="adaptive")
    assert run_eval(task, zoo.ensemble(), again, out, limit=3, progress=False)["n"] == 3
    assert zoo.seen == QUESTIONS[:3]  # nothing asked twice
    assert [rec["index"] for rec in lines(out / PREDICTIONS)] == [0, 1, 2]


def refused(out: Path, run: Callable[[], object]) -> str:
    """The one-line error of a run the directory refuses, which leaves its predictions untouched."""
    before = (out / PREDICTIONS).read_bytes()
    with pytest.raises(ConfigError, match="already holds a different run") as exc:
        run()
    assert "\n" not in str(exc.value) and (out / PREDICTIONS).read_bytes() == before
    return str(exc.value)


def test_a_run_of_another_version_or_with_other_options_is_refused_naming_the_difference(tmp_path, task, zoo):
    out = tmp_path / "run"
    run_eval(task, zoo.ensemble(), DecodeConfig(), out, limit=2, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())

    def recorded(edit: Callable[[dict], None]) -> str:
        changed = json.loads(json.dumps(manifest))
        edit(changed["identity"])
        (out / MANIFEST).write_text(json.dumps(changed))
        return refused(out, lambda: run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False))

    # Another version of the package, or one that recorded no version: its answers may differ.
    assert f"(adafuse: '0.0.1' now '{__version__}')" in recorded(lambda i: i.update(adafuse="0.0.1"))
    assert f"(adafuse: None now '{__version__}')" in recorded(lambda i: i.pop("adafuse"))
    # An option since deleted, whatever it said, and an option added since: other runs, not migrated.
    assert "(config.combiner: 'mean' now None)" in recorded(lambda i: i["config"].update(combiner="mean"))
    assert "(config.granularity: None now 'word')" in recorded(lambda i: i["config"].pop("granularity"))
    # Each difference is named, in one line.
    message = recorded(lambda i: i.update(adafuse="0.0.1") or i["config"].update(theta=0.5, beam=1))
    assert f"(adafuse: '0.0.1' now '{__version__}'; config.beam: 1 now 3; config.theta: 0.5 now 0.7)" in message
    # The recorded run itself still resumes.
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert run_eval(task, zoo.ensemble(), DecodeConfig(), out, limit=3, progress=False)["n"] == 3


def test_refuses_when_the_prompt_or_the_data_changed(tmp_path, task, zoo):
    out = tmp_path / "run"
    run_eval(task, zoo.ensemble(), DecodeConfig(), out, limit=2, progress=False)
    task.prompt_path.write_text(PROMPT + "Question: What is three?\nAnswer: three\n")
    edited = custom_task(task.data_path, task.prompt_path, name="tiny")
    with pytest.raises(ConfigError, match="prompt file's text"):
        run_eval(edited, zoo.ensemble(), DecodeConfig(), out, progress=False)

    rows = dict(reversed(list(QA.items())))  # same prompt, but the rows are in another order
    with pytest.raises(DataError, match="data changed"):
        run_eval(write_task(tmp_path, rows), zoo.ensemble(), DecodeConfig(), out, progress=False)


def test_predictions_without_a_run_description_are_not_trusted(tmp_path, task, zoo):
    out = tmp_path / "run"
    run_eval(task, zoo.ensemble(), DecodeConfig(), out, limit=2, progress=False)
    (out / MANIFEST).unlink()
    with pytest.raises(ConfigError, match="run it belongs to is unknown"):
        run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)


# ---------------------------------------------------------------------------------------- failures


def test_a_failing_item_is_recorded_with_its_error_and_scored_as_wrong(tmp_path, task, zoo):
    out = tmp_path / "run"
    summary = run_eval(task, zoo.ensemble(fail_on=QUESTIONS[1]), DecodeConfig(), out, progress=False)
    recs = lines(out / PREDICTIONS)
    assert [r["index"] for r in recs] == list(range(N))
    failed = recs[1]
    assert failed["error"] == "member 'alpha': connection refused"
    assert failed["prediction"] == "" and failed["correct"] == 0 and failed["finish_reason"] == "error"
    assert all("error" not in r for i, r in enumerate(recs) if i != 1)
    assert summary["errors"] == 1 and summary["n"] == N
    assert summary["metrics"]["em"] == pytest.approx(60.0)  # Rome, correct otherwise, now counts as wrong

    # A plain rerun keeps the recorded failure; --retry-errors redoes just that item.
    zoo.seen.clear()
    assert run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False)["errors"] == 1
    assert zoo.seen == []
    fixed = run_eval(task, zoo.ensemble(), DecodeConfig(), out, progress=False, retry_errors=True)
    assert zoo.seen == [QUESTIONS[1]]
    assert fixed["errors"] == 0 and fixed["metrics"]["em"] == pytest.approx(80.0)
    assert read_predictions(out / PREDICTIONS)[1]["prediction"] == "Rome"


def test_a_prompt_too_long_for_the_window_is_recorded_not_fatal(tmp_path, zoo):
    rows = dict(QA)
    rows["What is " + "very " * 60 + "long?"] = (["x"], "x")
    task = write_task(tmp_path, rows)
    summary = run_eval(task, zoo.ensemble(n_ctx=200), DecodeConfig(), tmp_path / "run", progress=False)
    recs = lines(tmp_path / "run" / PREDICTIONS)
    assert len(recs) == N + 1 and summary["errors"] == 1
    assert "context window is 200" in recs[-1]["error"] and recs[-1]["correct"] == 0


def test_problems_every_item_would_hit_fail_once_up_front(tmp_path, task, zoo):
    with pytest.raises(ConfigError, match="3 weights given for 2 members"):
        run_eval(task, zoo.ensemble(), DecodeConfig(weights=(1, 1, 1)), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="single member 5"):
        run_eval(task, zoo.ensemble(), DecodeConfig(method="single", single_member=5), tmp_path / "r2")
    assert not (tmp_path / "run" / PREDICTIONS).exists()


def test_single_uses_the_chosen_member_and_reports_its_name(tmp_path, task, zoo):
    cfg = DecodeConfig(method="single", single_member=1)
    summary = run_eval(task, zoo.ensemble(), cfg, tmp_path / "run", progress=False)
    assert summary["models"] == ["beta"] and summary["method"] == "single"
    assert summary["metrics"]["em"] == pytest.approx(80.0)
    members = summary["telemetry"]["members"]
    assert members["beta"]["tokens_evaluated"] > 0 and members["alpha"]["tokens_evaluated"] == 0


def test_translation_scores_the_corpus_and_leaves_per_item_correct_empty(tmp_path, zoo):
    rows = {"What is the capital of France?": (["Paris"], ""), "What color is the sky?": (["blue"], "")}
    task = write_task(tmp_path, rows, kind="translation")
    summary = run_eval(task, zoo.ensemble(), DecodeConfig(), tmp_path / "run", progress=True)
    assert set(summary["metrics"]) == {"bleu", "chrf"} and summary["metrics"]["chrf"] > 90
    assert all(r["correct"] is None for r in lines(tmp_path / "run" / PREDICTIONS))


# ------------------------------------------------------------------------------------------- labels


def test_method_labels_parse_into_config_overrides():
    names = ["alpha", "beta", "gamma"]
    base = DecodeConfig(theta=0.7, beam=3)
    assert parse_label("adafuse").config(base, names) == base
    spec = parse_label("adafuse@theta=0.5,beam=1")
    assert spec.method == "adafuse" and dict(spec.overrides) == {"theta": 0.5, "beam": 1}
    cfg = spec.config(base, names)
    assert (cfg.theta, cfg.beam, cfg.max_words) == (0.5, 1, 3)
    assert parse_label("single:1").config(base, names).single_member == 1
    assert parse_label("single:gamma").config(base, names).single_member == 2
    assert parse_label("single@member=beta").config(base, names).single_member == 1
    assert parse_label("single").config(base, names).single_member == 0
    assert parse_label("span").config(base, names).method == "span"
    cfg = parse_label("token@max-words=2,weights=1/2/1,granularity=sentence").config(base, names)
    assert (cfg.max_words, cfg.weights, cfg.granularity) == (2, (1.0, 2.0, 1.0), "sentence")
    assert parse_label("adafuse@weights=equal,max_rounds=none").config(base, names).resolved_weights is None
    assert parse_label("single:gemma3-270m").dirname == "single:gemma3-270m"
    assert MethodSpec("a/b c", "adafuse").dirname == "a_b_c"  # never a path separator


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("fancy", "unknown method 'fancy'"),
        ("adafuse@theta=2", "theta must be in"),
        ("adafuse@theta=high", "theta must be a number, got 'high'"),
        ("adafuse@colour=red", "unknown option 'colour'"),
        # A deleted option is as unknown as any other; the error lists the options there are.
        ("adafuse@combiner=vote", "^method label 'adafuse@combiner=vote': unknown option 'combiner'; valid options: "),
        ("adafuse@stop_at_boxed=true", "unknown option 'stop_at_boxed'"),  # the task says where an answer stops
        ("adafuse@theta", "is not KEY=VALUE"),
        ("adafuse@", "nothing after '@'"),
        ("adafuse:1", "only 'single' takes a member"),
        ("single:", "nothing after ':'"),
        ("adafuse@theta=0.5,theta=0.6", "theta given twice"),
    ],
)
def test_bad_labels_are_refused_with_the_reason(label, message):
    with pytest.raises(ConfigError, match=message):
        parse_label(label)


def test_member_names_and_indices_are_checked_against_the_ensemble():
    with pytest.raises(ConfigError, match="no member named 'delta'"):
        parse_label("single:delta").config(DecodeConfig(), ["alpha", "beta"])
    with pytest.raises(ConfigError, match="member 4 is not a member index"):
        parse_label("single:4").config(DecodeConfig(), ["alpha", "beta"])


def test_method_lists_keep_options_with_their_label():
    assert split_methods("adafuse@theta=0.5,beam=1,single:1, span,token") == [
        "adafuse@theta=0.5,beam=1",
        "single:1",
        "span",
        "token",
    ]
    with pytest.raises(ConfigError):
        split_methods(" , ")


# ----------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_and_brackets_the_score():
    preds = ["Paris", "Rome", "x", "blue", "y", "Shakespeare", "z", "four"]
    golds = [["Paris"], ["Rome"], ["Oslo"], ["blue"], ["red"], ["Shakespeare"], ["Bern"], ["four"]]
    first = bootstrap_interval("qa", "em", preds, golds)
    assert first == bootstrap_interval("qa", "em", preds, golds)
    assert first is not None and first[0] < 62.5 < first[1] and first[0] >= 0.0 and first[1] <= 100.0
    assert bootstrap_interval("qa", "em", ["a"] * 4, [["a"]] * 4) == (100.0, 100.0)
    assert bootstrap_interval("qa", "em", [], []) is None


def test_bleu_bootstrap_resamples_the_corpus():
    """The interval from summed sentence statistics equals BLEU recomputed on each resampled corpus."""
    import numpy as np

    hyps = ["the cat sat on the mat", "a dog barked loudly", "it rained all day", "she reads books", "hello"]
    refs = ["the cat sat on a mat", "the dog barked loudly", "it was raining all day", "she reads a book", "hi"]
    lo, hi = bootstrap_interval("translation", "bleu", hyps, refs, resamples=50, seed=3)
    idx = np.random.default_rng(3).integers(0, len(hyps), size=(50, len(hyps)))
    direct = [metrics.corpus_bleu([hyps[i] for i in row], [refs[i] for i in row]) for row in idx]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(direct, [0.025, 0.975])), abs=1e-9)
    assert lo <= metrics.corpus_bleu(hyps, refs) <= hi


# ------------------------------------------------------------------------------------------- compare


def test_compare_runs_every_label_on_shared_models_and_writes_report_and_plot(tmp_path, task, zoo):
    out = tmp_path / "cmp"
    labels = ["adafuse", "adafuse@theta=0.5,beam=1", "single:1", "single:alpha", "token"]
    results = run_compare(task, labels, zoo.ensemble, out, progress=False, models=["alpha", "beta"])
    assert zoo.built == 1  # models loaded once for all five methods
    assert [r.spec.label for r in results] == labels
    for label in labels:
        assert lines(out / label / PREDICTIONS) and json.loads((out / label / SUMMARY).read_text())["n"] == N
    assert json.loads((out / "single:alpha" / SUMMARY).read_text())["models"] == ["alpha"]

    report = (out / REPORT).read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | models | em (95% CI) | f1 |")
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]] == labels
    adafuse_row = rows[1].split(" | ")
    assert adafuse_row[1] == "alpha, beta" and adafuse_row[2].startswith("80.0 [")
    assert (out / FRONTIER).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / FRONTIER).stat().st_size > 5000

    # Rerun: every method is reused from disk (no models loaded) and the report is identical.
    def factory() -> Ensemble:
        raise AssertionError("models loaded although every method was done")

    run_compare(task, labels, factory, out, progress=False, models=["alpha", "beta"])
    assert (out / REPORT).read_text() == report


def test_compare_refuses_labels_that_would_share_a_directory(tmp_path, task, zoo):
    with pytest.raises(ConfigError, match="share one directory"):
        run_compare(task, ["adafuse@theta=0.5 ", "adafuse@theta=0.5"], zoo.ensemble(), tmp_path, progress=False)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_errors_are_one_line_and_exit_2(tmp_path, task):
    from adafuse.cli import app  # here, so the runner's own tests do not need the command line to import

    runner = CliRunner()
    cases = [
        ["eval", "--data", str(task.data_path)],
        ["eval", "--data", str(task.data_path), "--prompt", str(task.prompt_path), "--method", "fancy"],
        ["eval", "--task", "nope"],
        ["compare", "--task", "triviaqa", "--methods", "adafuse@beam=0", "--out", str(tmp_path)],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        # One message (rich may wrap it to the terminal's width), no traceback.
        assert result.output.startswith("error: ") and result.output.count("error:") == 1
        assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*/predictions.jsonl"))


# ----------------------------------------------------------------------------------------- real models


@pytest.mark.models
def test_real_models_compare_adafuse_and_single_on_triviaqa(tmp_path, zoo_members, fixture_data):
    task = load_task("triviaqa", fixture_data)
    ens = Ensemble(zoo_members)
    results = run_compare(task, ["adafuse", "single:0"], ens, tmp_path, limit=2, progress=False, resamples=200)
    for r, label in zip(results, ["adafuse", "single:0"], strict=True):
        summary = json.loads((tmp_path / label / SUMMARY).read_text())
        assert summary["n"] == 2 and summary["errors"] == 0 and summary["task"] == "triviaqa"
        recs = lines(tmp_path / label / PREDICTIONS)
        assert [rec["index"] for rec in recs] == [0, 1]
        assert all(rec["raw"].strip() and rec["finish_reason"] in ("stop", "eos", "length") for rec in recs)
        assert summary["telemetry"]["tokens_evaluated"] > 0 and summary["telemetry"]["output_tokens"] > 0
        assert r.compute is not None and r.compute > 0
    assert results[0].summary["models"] == [m.name for m in zoo_members]
    assert results[1].summary["models"] == [zoo_members[0].name]
    single = results[1].summary["telemetry"]["members"]
    assert single[zoo_members[0].name]["tokens_evaluated"] > 0
    assert all(single[m.name]["tokens_evaluated"] == 0 for m in zoo_members[1:])
    assert (tmp_path / FRONTIER).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([line for line in (tmp_path / REPORT).read_text().splitlines() if line.startswith("| ")]) == 3
