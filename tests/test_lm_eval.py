"""The lm-evaluation-harness model ``adafuse``: string-level log-likelihoods over members with different
tokenizers, ``is_greedy``, rolling windows, generation, argument parsing and registration on scripted members;
then real lm-eval runs (the Python API and the command line) on local tasks with the built-in models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'adafuse[lmeval]')")

from fakes import EOS, ScriptedMember, table  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from adafuse.ensemble import Ensemble  # noqa: E402
from adafuse.errors import ConfigError  # noqa: E402
from adafuse.integrations import lm_eval as integration  # noqa: E402
from adafuse.integrations.lm_eval import AdafuseLM, parse_model_args  # noqa: E402

# Member "a" spells " Paris" as one token and is sure of it; member "b" spells it " Par" + "is" and would
# rather say " Rome" ("b" is the one whose greedy answer differs).
A_ROWS = {
    "Q:": {" Paris": 0.6, " Rome": 0.3},
    "Q: Paris": {"\n": 0.9},
    "Q: Rome": {"\n": 0.9},
}
B_ROWS = {
    "Q:": {" Ro": 0.5, " Par": 0.45},
    "Q: Par": {"is": 0.9},
    "Q: Ro": {"me": 0.9},
    "Q: Paris": {"\n": 0.9},
    "Q: Rome": {"\n": 0.9},
}
B_AGREES = {**B_ROWS, "Q:": {" Par": 0.5, " Ro": 0.45}}


def member_a(rows: dict = A_ROWS) -> ScriptedMember:
    return ScriptedMember("a", ["Q:", " Paris", " Rome", "\n"], table(rows))


def member_b(rows: dict = B_ROWS) -> ScriptedMember:
    return ScriptedMember("b", ["Q:", " Par", "is", " Ro", "me", "\n"], table(rows))


def model(*members: ScriptedMember, **kwargs) -> AdafuseLM:
    return AdafuseLM(ensemble=Ensemble(list(members)), **kwargs)


def ll_requests(*pairs: tuple[str, str]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


# ------------------------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_is_the_weighted_mean_of_each_members_own_log_probability():
    lm = model(member_a(), member_b(), greedy="none")
    (paris, _), (rome, _) = lm.loglikelihood(ll_requests(("Q:", " Paris"), ("Q:", " Rome")))
    a_paris, b_paris = math.log(0.6), math.log(0.45) + math.log(0.9)
    a_rome, b_rome = math.log(0.3), math.log(0.5) + math.log(0.9)
    assert paris == pytest.approx((a_paris + b_paris) / 2)
    assert rome == pytest.approx((a_rome + b_rome) / 2)

    weighted = model(member_a(), member_b(), greedy="none", weights="3,1")
    [(paris_w, _)] = weighted.loglikelihood(ll_requests(("Q:", " Paris")))
    assert paris_w == pytest.approx(0.75 * a_paris + 0.25 * b_paris)


def test_a_merge_across_the_boundary_is_scored_on_the_joint_tokenisation():
    # Member "c" tokenises "Q: Paris" as "Q" + ": Paris": the context's own ":" is re-tokenised. The text " Paris"
    # after "Q:" has probability P(text "Q: Paris") / P(text "Q:"): both spellings (": Paris", and ":" then
    # " Paris") over every token that starts with ":" (":" and ": Paris"), i.e. (0.3 + 0.5 * 0.2) / (0.5 + 0.3).
    rows = {"Q": {":": 0.5, ": Paris": 0.3}, "Q:": {" Paris": 0.2}}
    c = ScriptedMember("c", ["Q", ":", ": Paris", " Paris"], table(rows))
    [(ll, _)] = model(c, greedy="none").loglikelihood(ll_requests(("Q:", " Paris")))
    assert ll == pytest.approx(math.log((0.3 + 0.5 * 0.2) / (0.5 + 0.3)))
    # Not divided by P(":" token) alone, which would give 0.3 / 0.5 + 0.2 = 0.8, more than the text's probability
    # (the bonus of docs/RESULTS.md, trace 8).
    assert ll < 0 and ll != pytest.approx(math.log(0.3 / 0.5 + 0.2))
    # Tokenising the continuation on its own would have said log 0.2.
    assert ll != pytest.approx(math.log(0.2))


def test_requests_sharing_a_context_are_scored_together_and_answers_keep_request_order():
    a, b = member_a(), member_b()
    batches: list[list] = []
    score = b.score
    b.score = lambda requests: batches.append(list(requests)) or score(requests)  # type: ignore[method-assign]
    lm = model(a, b, greedy="none")
    pairs = [("Q:", " Rome"), ("P:", " Rome"), ("Q:", " Paris"), ("Q:", " Rome")]
    out = lm.loglikelihood(ll_requests(*pairs))
    assert out[0] == out[3] and out[0][0] < out[2][0]
    # One score call per distinct context, each distinct continuation once: the member's prefix cache holds
    # the context for all of them.
    rome, paris = b.tokenize(" Rome"), b.tokenize(" Paris")
    assert [[(list(ctx), list(toks)) for ctx, toks in batch] for batch in batches] == [
        [(b.tokenize("P:"), rome)],  # "P:" sorts before "Q:"
        [(b.tokenize("Q:"), rome), (b.tokenize("Q:"), paris)],
    ]


def test_an_empty_context_conditions_on_the_end_token_for_members_without_bos():
    a = ScriptedMember("a", [" Paris"], table({EOS: {" Paris": 0.25}}))
    [(ll, _)] = model(a, greedy="none").loglikelihood(ll_requests(("", " Paris")))
    assert ll == pytest.approx(math.log(0.25))


# ------------------------------------------------------------------------------------------------ is_greedy


def test_is_greedy_members_needs_every_member_to_write_the_continuation_greedily():
    split = model(member_a(), member_b(), greedy="members")
    assert [g for _, g in split.loglikelihood(ll_requests(("Q:", " Paris"), ("Q:", " Rome")))] == [False, False]

    agree = model(member_a(), member_b(B_AGREES), greedy="members")
    flags = [g for _, g in agree.loglikelihood(ll_requests(("Q:", " Paris"), ("Q:", " Rome"), ("Q:", " Pa")))]
    # A prefix of what they write is greedy too: the text is compared, not the tokens.
    assert flags == [True, False, True]


def test_is_greedy_ensemble_asks_what_the_ensemble_itself_writes():
    # The members disagree, so "members" says no to both; fusion writes " Paris" (a's confidence outweighs
    # b's slight preference), and "ensemble" says yes to exactly that.
    lm = model(member_a(), member_b(), greedy="ensemble")
    assert lm.generate_text("Q:", {"until": ["\n"]}) == " Paris"
    flags = [g for _, g in lm.loglikelihood(ll_requests(("Q:", " Paris"), ("Q:", " Rome"), ("Q:", " Paris\n")))]
    assert flags == [True, False, True]


def test_is_greedy_none_is_always_false():
    lm = model(member_a(), member_b(B_AGREES), greedy="none")
    assert [g for _, g in lm.loglikelihood(ll_requests(("Q:", " Paris")))] == [False]


# ---------------------------------------------------------------------------------------- rolling, generation


def test_rolling_loglikelihood_predicts_every_token_once_across_windows():
    def script(_text: str) -> dict[str, float]:
        return {"a": 0.5, "b": 0.25}

    text = "abba ab ba"
    full = ScriptedMember("m", [], script, n_ctx=4096)
    ids = full.tokenize(text)
    expected = sum(full.logprobs_of([0, *ids[:j]], [ids[j]])[0] for j in range(len(ids)))
    small = ScriptedMember("m", [], script, n_ctx=4)  # windows of 4 tokens: several of them
    reqs = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    assert model(full).loglikelihood_rolling(reqs) == [pytest.approx(expected)]
    assert model(small).loglikelihood_rolling(reqs) == [pytest.approx(expected)]


def test_generate_until_stops_at_until_and_respects_max_gen_toks():
    # The token budget is counted in the first member's tokenizer: "b" spells " Paris" in two tokens.
    lm = model(member_b(B_AGREES), member_a())
    reqs = [
        Instance("generate_until", {}, ("Q:", {"until": ["\n"], "max_gen_toks": 16}), 0),
        Instance("generate_until", {}, ("Q:", {"until": "\n", "do_sample": False}), 1),
        Instance("generate_until", {}, ("Q:", {"until": [], "max_gen_toks": 1}), 2),
        Instance("generate_until", {}, ("Q:", {"until": [], "max_gen_toks": 16}), 3),
    ]
    assert lm.generate_until(reqs) == [" Paris", " Paris", " Par", " Paris\n"]


def test_chat_contexts_are_rendered_by_each_member():
    lm = model(member_a(), member_b())
    context = lm.apply_chat_template([{"role": "user", "content": "Capital?"}])
    assert lm._member_prompts(context) == [("User: Capital?\n\nAssistant:", False)] * 2
    prefill = lm.apply_chat_template(
        [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "It is"}],
        add_generation_prompt=False,
    )
    assert lm._member_prompts(prefill) == [("User: Capital?\n\nAssistant:It is", False)] * 2


# ------------------------------------------------------------------------------------ arguments, registration


def test_model_args_read_lists_as_lm_eval_users_write_them():
    assert parse_model_args("models=a,b,c,theta=0.5,weights=1,2,3,greedy=none") == {
        "models": "a,b,c",
        "theta": "0.5",
        "weights": "1,2,3",
        "greedy": "none",
    }
    assert parse_model_args("models=[a,b],beam=2") == {"models": "[a,b]", "beam": "2"}
    assert integration._as_list("[a,b]") == ["a", "b"] == integration._as_list(["a", "b"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_model_args("theta=0.5,oops")


def test_bad_model_args_are_one_line_errors():
    ens = Ensemble([member_a()])
    with pytest.raises(ConfigError, match="unknown adafuse model argument"):
        AdafuseLM(ensemble=ens, tehta=0.5)
    # A deleted option is unknown too, and the error lists the options there are.
    with pytest.raises(ConfigError, match=r"argument\(s\) \['combiner'\]; known: method, theta, .*max_gen_toks"):
        AdafuseLM(ensemble=ens, combiner="vote")
    with pytest.raises(ConfigError, match="greedy must be one of"):
        AdafuseLM(ensemble=ens, greedy="always")
    with pytest.raises(ConfigError, match="theta"):
        AdafuseLM(ensemble=ens, theta="high")
    # lm-eval's own batch_size / device arguments are accepted and ignored.
    AdafuseLM(ensemble=ens, batch_size=1, device="cpu", max_batch_size=None)


def test_registered_under_adafuse_and_entry_points_are_registered_lazily(monkeypatch):
    from importlib.metadata import EntryPoint

    from lm_eval.api import registry

    assert registry.get_model("adafuse") is AdafuseLM
    assert registry.get_model("hf").__name__ == "HFLM"  # lm-eval's own models are still there
    ep = EntryPoint("adafuse-test-plugin", "adafuse.integrations.lm_eval:AdafuseLM", integration.ENTRY_POINT_GROUP)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [ep] if group == ep.group else [])
    try:
        assert integration.register_entry_points() == ["adafuse-test-plugin"]
        assert integration.register_entry_points() == []
        assert registry.get_model("adafuse-test-plugin") is AdafuseLM
    finally:
        registry.model_registry._objs.pop("adafuse-test-plugin", None)


# ------------------------------------------------------------------------------------ real lm-eval, real models

GEN_ROWS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "What is the capital of Italy?", "answer": "Rome"},
    {"question": "What is the capital of Japan?", "answer": "Tokyo"},
]
MC_ROWS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "Madrid"], "label": 0},
    {"question": "What is the capital of Italy?", "choices": ["Oslo", "Rome", "Lima"], "label": 1},
    {"question": "What color is the sky on a clear day?", "choices": ["green", "red", "blue"], "label": 2},
]
SHOT = "Question: What is the capital of Germany?\\nAnswer: Berlin\\n\\n"


def write_tasks(root: Path) -> Path:
    """Two lm-eval tasks over local JSONL files (``dataset_path: json``: nothing comes from the hub)."""
    for name, rows in (("gen", GEN_ROWS), ("mc", MC_ROWS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f'dataset_path: json\ntest_split: test\ndoc_to_text: "{SHOT}Question: {{{{question}}}}\\nAnswer:"\n'
    (root / "gen.yaml").write_text(
        "task: adafuse_gen\n"
        + common
        + f"dataset_kwargs:\n  data_files:\n    test: {root / 'gen.jsonl'}\n"
        + "output_type: generate_until\n"
        + 'doc_to_target: "{{answer}}"\n'
        + 'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n'
        + "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        + "    ignore_case: true\n    ignore_punctuation: true\n"
        + "filter_list:\n  - name: strip\n    filter:\n      - function: remove_whitespace\n"
        + "      - function: take_first\n"
    )
    (root / "mc.yaml").write_text(
        "task: adafuse_mc\n"
        + common
        + f"dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        + "output_type: multiple_choice\ndoc_to_choice: choices\ndoc_to_target: label\n"
        + "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        + "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return root


def prompt_of(question: str) -> str:
    return SHOT.replace("\\n", "\n") + f"Question: {question}\nAnswer:"


@pytest.mark.models
@pytest.mark.slow
def test_simple_evaluate_runs_a_generation_and_a_multiple_choice_task(zoo_members, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = AdafuseLM(ensemble=Ensemble(zoo_members[:2]))  # smollm2-135m + gemma3-270m: two tokenizers
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=["adafuse_gen", "adafuse_mc"],
        task_manager=TaskManager(include_path=str(write_tasks(tmp_path))),
        log_samples=True,
    )
    gen, mc = results["results"]["adafuse_gen"], results["results"]["adafuse_mc"]
    assert 0.0 <= gen["exact_match,strip"] <= 1.0
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= mc["acc_norm,none"] <= 1.0

    gen_samples = sorted(results["samples"]["adafuse_gen"], key=lambda s: s["doc_id"])
    assert [s["target"] for s in gen_samples] == [r["answer"] for r in GEN_ROWS]
    for sample, row in zip(gen_samples, GEN_ROWS, strict=True):
        [[raw]] = sample["resps"]
        # What lm-eval recorded is exactly the ensemble's own greedy answer, cut at the task's stop string.
        assert raw == lm.generate_text(prompt_of(row["question"]), {"until": ["\n"], "max_gen_toks": 8})
        assert "\n" not in raw and raw.strip()
        assert sample["filtered_resps"] == [raw.lstrip()]
    matches = [s["exact_match"] for s in gen_samples]
    assert set(matches) <= {0.0, 1.0} and gen["exact_match,strip"] == pytest.approx(sum(matches) / len(matches))

    mc_samples = sorted(results["samples"]["adafuse_mc"], key=lambda s: s["doc_id"])
    correct = 0
    for sample, row in zip(mc_samples, MC_ROWS, strict=True):
        lls = [resp[0][0] for resp in sample["resps"]]
        assert len(lls) == len(row["choices"]) and all(math.isfinite(x) and x < 0 for x in lls)
        # The numbers of asking the model directly (lm-eval puts a space before each choice): equal, because
        # each context is prefilled the same way whatever the member's cache held before.
        direct = lm.loglikelihood_pairs([(prompt_of(row["question"]), " " + c) for c in row["choices"]])
        assert lls == pytest.approx([ll for ll, _ in direct], abs=1e-9)
        correct += max(range(len(lls)), key=lls.__getitem__) == row["label"]
    assert mc["acc,none"] == pytest.approx(correct / len(MC_ROWS))


@pytest.mark.models
@pytest.mark.slow
def test_the_lm_eval_command_line_finds_the_model_by_name(tmp_path):
    tasks = write_tasks(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from adafuse.integrations.lm_eval import main; main()",
            "--model",
            "adafuse",
            "--model_args",
            "models=[smollm2-135m,gemma3-270m]",
            "n_ctx=512",
            "threads=2",
            "greedy=none",
            "--tasks",
            "adafuse_mc",
            "--include_path",
            str(tasks),
            "--output_path",
            str(out),
            "--log_samples",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = out.rglob("results_*.json")
    data = json.loads(results_file.read_text())
    assert data["config"]["model"] == "adafuse"
    assert data["config"]["adafuse_models"] == ["smollm2-135m", "gemma3-270m"]
    assert 0.0 <= data["results"]["adafuse_mc"]["acc,none"] <= 1.0
    [samples_file] = out.rglob("samples_adafuse_mc_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == len(MC_ROWS)
    assert all(len(s["resps"]) == 3 and s["resps"][0][0][1] in (False, "False") for s in samples)


def test_a_controller_in_the_model_args_is_checked_against_the_members_and_decides(tmp_path):
    from adafuse.control.fit import neutral

    path = tmp_path / "controller.json"
    neutral(["a", "b"]).save(path)
    with pytest.raises(ConfigError, match=r"fitted for members \['a', 'b'\], not \['a'\]"):
        AdafuseLM(ensemble=Ensemble([member_a()]), controller=str(path))
    lm = model(member_a(), member_b(), controller=str(path))
    assert lm.config.controller == str(path)
    out = lm.generate_until([Instance("generate_until", {}, ("Q:", {"until": ["\n"]}), 0)])
    assert out == [" Paris"]
