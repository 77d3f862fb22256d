"""The granularity controller, the weighted mean and evidence weights, on scripted members."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from fakes import EOS, ScriptedMember, table

from adafuse.config import DecodeConfig
from adafuse.decoding.evidence import MIN_INSTRUCTION_BYTES, answer_spans, evidence_weights, instruction_spans
from adafuse.decoding.granularity import (
    POLICY,
    GranularityPolicy,
    Signals,
    boundary_end,
    decide,
    text_kind,
)
from adafuse.ensemble import Ensemble
from adafuse.errors import ConfigError
from adafuse.result import Result


def signals(margins=(0.9, 0.95), entropies=(0.3, 0.2), streak=0, kind="prose", words=10) -> Signals:
    return Signals(tuple(margins), tuple(entropies), streak, kind, words)


# -- the rule, on signals ---------------------------------------------------------------------------------------


def test_agreeing_confident_members_get_a_sentence_then_a_paragraph():
    assert decide(signals(streak=0), 0.7, 3, POLICY).name == "word"
    assert decide(signals(streak=1), 0.7, 3, POLICY).name == "sentence"
    assert decide(signals(streak=3), 0.7, 3, POLICY).name == "paragraph"
    assert decide(signals(streak=3), 0.7, 3, POLICY).boundary == "paragraph"


def test_doubt_or_disagreement_shortens_the_unit():
    # One member unsure (margin under theta): words, however long the agreement lasted.
    assert decide(signals(margins=(0.9, 0.5), streak=5), 0.7, 3, POLICY).name == "word"
    # A flat distribution (high entropy) counts as unsure even with a margin.
    assert decide(signals(entropies=(0.3, 2.5), streak=5), 0.7, 3, POLICY).name == "word"
    # Everyone lost: one token at a time.
    unit = decide(signals(margins=(0.05, 0.02), streak=5), 0.7, 3, POLICY)
    assert (unit.name, unit.max_words) == ("token", 1)


def test_the_first_words_of_an_answer_are_decided_word_by_word():
    assert decide(signals(streak=4, words=0), 0.7, 3, POLICY).name == "word"
    assert decide(signals(streak=4, words=1), 0.7, 3, POLICY).name == "word"
    assert decide(signals(streak=4, words=2), 0.7, 3, POLICY).name == "paragraph"


def test_maths_is_fused_a_word_at_a_time_and_code_never_grows():
    unit = decide(signals(streak=4, kind="maths"), 0.7, 3, POLICY)
    assert (unit.name, unit.max_words) == ("word", 1)
    unit = decide(signals(streak=4, kind="code"), 0.7, 3, POLICY)
    assert (unit.name, unit.max_words) == ("word", 3)


def test_the_rule_reads_its_thresholds_from_the_policy():
    eager = GranularityPolicy(sentence_after=0, lead_words=0, sentence_words=5)
    unit = decide(signals(streak=0, words=0), 0.7, 3, eager)
    assert (unit.name, unit.max_words) == ("sentence", 5)
    # Without one, the thresholds in force (the constant POLICY) decide: the answer's first words word by word.
    assert decide(signals(streak=0, words=0), 0.7, 3) == decide(signals(streak=0, words=0), 0.7, 3, POLICY)
    assert decide(signals(streak=0, words=0), 0.7, 3).name == "word"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Natalia sold 48 / 2 = 24", "maths"),
        ("so the total is $12 + 7 = ", "maths"),
        ("The answer is \\boxed{42", "maths"),
        ("Here is the code:\n```python\nx = 1", "code"),
        ("def add(a, b):\n    return", "code"),
        ("if (x) {", "code"),
        ("George V married Mary of Teck in 1893 and", "prose"),
        ("Question: Who wrote Hamlet?\nAnswer:", "prose"),
        ("", "prose"),
    ],
)
def test_text_kind_detectors(text, kind):
    assert text_kind(text) == kind


def test_sentence_and_paragraph_ends():
    assert boundary_end(" He came. Then he left.", "sentence") == len(" He came.")
    assert boundary_end(" He came home\nThen", "sentence") == len(" He came home")
    assert boundary_end(" Mr. Smith", "sentence") == len(" Mr.")  # a cheap detector, not a parser
    assert boundary_end(" no end yet", "sentence") is None
    assert boundary_end(" one.\n\nTwo", "paragraph") == len(" one.")
    assert boundary_end(" one.\nTwo", "paragraph") is None


# -- the controller inside the decoder --------------------------------------------------------------------------

PIECES = [" The", " cat", " sat", " on", " the", " mat", ".", " It", " purred", " loudly", " dog", "\n"]
STORY = {
    "": {" The": 0.97},
    " The": {" cat": 0.97},
    " The cat": {" sat": 0.97},
    " The cat sat": {" on": 0.97},
    " The cat sat on": {" the": 0.97},
    " The cat sat on the": {" mat": 0.97},
    " The cat sat on the mat": {".": 0.97},
    " The cat sat on the mat.": {" It": 0.97},
    " The cat sat on the mat. It": {" purred": 0.97},
    " The cat sat on the mat. It purred": {" loudly": 0.97},
    " The cat sat on the mat. It purred loudly": {".": 0.97},
    " The cat sat on the mat. It purred loudly.": {EOS: 0.99},
}


def story_member(name: str, rows: dict) -> ScriptedMember:
    return ScriptedMember(name, PIECES, table(rows), prompt="Story:")


def test_adaptive_granularity_commits_whole_sentences_once_members_keep_agreeing():
    ens = Ensemble([story_member("a", STORY), story_member("b", STORY)])
    word = ens.generate("Story:", DecodeConfig(max_words=1))
    adaptive = ens.generate("Story:", DecodeConfig(max_words=1, granularity="adaptive"))
    assert adaptive.text == word.text == " The cat sat on the mat. It purred loudly."
    assert [r.unit for r in adaptive.rounds][:3] == ["word", "word", "sentence"]
    # Third round: two agreeing rounds, two words in, everyone sure: the rest of the sentence at once.
    assert adaptive.rounds[2].committed == " sat on the mat."
    assert adaptive.telemetry.rounds < word.telemetry.rounds


def test_adaptive_granularity_drops_back_to_words_where_members_disagree():
    other = dict(STORY)
    other[" The cat sat on the mat. It"] = {" purred": 0.5, " sat": 0.45}
    ens = Ensemble([story_member("a", STORY), story_member("b", other)])
    res = ens.generate("Story:", DecodeConfig(max_words=1, granularity="adaptive"))
    units = {r.committed: r.unit for r in res.rounds}
    assert units[" purred"] == "word"  # b is unsure there: a word, scored by both
    assert res.text == " The cat sat on the mat. It purred loudly."


def test_fixed_token_granularity_fuses_one_token_per_round():
    ens = Ensemble([story_member("a", STORY), story_member("b", STORY)])
    res = ens.generate("Story:", DecodeConfig(granularity="token"))
    assert all(r.unit == "token" for r in res.rounds)
    assert res.rounds[0].committed == " The" and res.telemetry.rounds == 12  # 11 tokens, then the end


def test_granularity_and_weight_options_are_validated():
    with pytest.raises(ConfigError, match="granularity"):
        DecodeConfig(granularity="chapter")
    with pytest.raises(ConfigError, match="weights"):
        DecodeConfig(weights="best")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="auto_sharpness"):
        DecodeConfig(auto_sharpness=-1)
    for floor in (-0.1, 1.0, math.nan, "0.1"):
        with pytest.raises(ConfigError, match="min_weight"):
            DecodeConfig(min_weight=floor)  # type: ignore[arg-type]


# -- the weighted mean and weights -------------------------------------------------------------------------------

QA = [" Paris", " Rome", " Lyon", "\n"]
# a proposes " Paris" but is unsure; b is very sure of " Rome"; each scores the other's answer lower.
SURE_ROME = {"": {" Rome": 0.9, " Paris": 0.05}, " Rome": {EOS: 0.99}, " Paris": {EOS: 0.99}}
UNSURE_PARIS = {"": {" Paris": 0.45, " Rome": 0.2, " Lyon": 0.3}, " Rome": {EOS: 0.99}, " Paris": {EOS: 0.99}}


def qa_member(name: str, rows: dict, logprob: float | None = None, prompt: str = "Q:") -> ScriptedMember:
    m = ScriptedMember(name, QA, table(rows), prompt=prompt)
    m.prompt_logprob = logprob
    return m


# a is sure of " Paris" and all but rules " Rome" out; b and c both prefer " Rome", clearly but not absolutely.
VETO_PARIS = {"": {" Paris": 0.95, " Rome": 0.0005}, " Rome": {EOS: 0.99}, " Paris": {EOS: 0.99}}
MAJORITY_ROME = {"": {" Rome": 0.8, " Paris": 0.05}, " Rome": {EOS: 0.99}, " Paris": {EOS: 0.99}}


def test_under_the_weighted_mean_one_members_near_certain_rejection_outweighs_two_others():
    members = [qa_member("a", VETO_PARIS), qa_member("b", MAJORITY_ROME), qa_member("c", MAJORITY_ROME)]
    res = Ensemble(members).generate("Q:", DecodeConfig(max_words=1, beam=2))
    # a's -log(0.0005) for " Rome" outweighs b's and c's preference together (docs/RESULTS.md, trace 1).
    assert res.text == " Paris"
    for cand in res.rounds[0].candidates:
        assert cand.combined == pytest.approx(sum(cand.scores[m] for m in "abc") / 3)


def test_default_weights_are_automatic_for_adafuse_and_equal_for_the_baselines():
    cfg = DecodeConfig()
    assert cfg.resolved_weights == "auto" and cfg.auto_weights and cfg.to_dict()["weights"] == "auto"
    assert (cfg.auto_sharpness, cfg.min_weight) == (100.0, 0.05)
    # The default survives a change of method: each method gets its own.
    for method in ("span", "sample", "token"):
        other = replace(cfg, method=method)
        assert other.resolved_weights is None and not other.auto_weights and other.to_dict()["weights"] is None
    assert replace(DecodeConfig(method="span"), method="adafuse").resolved_weights == "auto"
    assert not replace(cfg, method="single").auto_weights
    # "equal" is the paper's setting, spelled as runs recorded it before the default changed.
    assert DecodeConfig(weights="equal").weights is None and DecodeConfig(weights="equal").to_dict()["weights"] is None
    assert DecodeConfig(weights=(1, 3)).member_weights(2) == (0.25, 0.75)


def test_evidence_weights_follow_the_rule():
    w = evidence_weights((0.5, 0.5), {0: 1.0, 1: 1.1}, 20.0)
    assert w[0] / w[1] == pytest.approx(2.718281828**2, rel=1e-6)
    assert sum(w) == pytest.approx(1.0)
    assert evidence_weights((0.5, 0.5), {0: 1.0, 1: 1.1}, 0.0) == pytest.approx((0.5, 0.5))
    # A member not voting keeps no weight.
    assert evidence_weights((1 / 3,) * 3, {0: 0.9, 2: 0.9}, 20.0) == pytest.approx((0.5, 0.0, 0.5))


FEWSHOT = "Q: x?\nA: Rome\n\nQ: y?\nA:"


def test_auto_weights_trust_the_member_that_predicts_the_worked_answers_best():
    # The prompt's one worked answer is " Rome" (5 bytes, one token); each member reads the 9 tokens up to its end,
    # and the fake spreads its log-likelihood evenly over the 8 after the first: b's is far higher, so b's answer
    # wins despite equal base weights.
    ens = Ensemble(
        [qa_member("a", UNSURE_PARIS, logprob=-16.0, prompt=FEWSHOT), qa_member("b", SURE_ROME, -4.0, FEWSHOT)]
    )
    res = ens.generate(FEWSHOT, DecodeConfig(max_words=1, beam=1, weights=(0.8, 0.2)))
    assert res.text == " Paris"
    res = ens.generate(FEWSHOT, DecodeConfig(max_words=1, beam=1, weights="auto"))
    assert res.text == " Rome" and res.telemetry.evidence == "answers"
    assert res.telemetry.prompt_nll == pytest.approx({"a": 16.0 / 8 / 5, "b": 4.0 / 8 / 5})
    assert res.telemetry.weights["b"] > 0.99 and res.telemetry.benched == ["a"]
    # The result (and its config) survive a JSON round trip.
    back = Result.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.telemetry.weights == res.telemetry.weights and back.config["weights"] == "auto"


def test_a_prompt_without_worked_answers_or_instructions_is_no_evidence():
    # "Q:" has neither worked answers nor instructions: the given weights (equal) stand.
    ens = Ensemble([qa_member("a", UNSURE_PARIS, logprob=-3.0), qa_member("b", SURE_ROME, logprob=-2.0)])
    res = ens.generate("Q:", DecodeConfig(max_words=1, beam=1))
    assert res.config["weights"] == "auto" and res.telemetry.evidence is None and res.telemetry.prompt_nll == {}
    assert res.telemetry.weights == {"a": 0.5, "b": 0.5} and res.telemetry.benched == []


def test_auto_weights_fall_back_to_the_given_weights_when_a_member_cannot_tell():
    ens = Ensemble([qa_member("a", UNSURE_PARIS, logprob=-3.0), qa_member("b", SURE_ROME, logprob=None)])
    res = ens.generate("Q:", DecodeConfig(max_words=1, beam=1, weights="auto"))
    assert res.telemetry.prompt_nll == {}
    assert res.telemetry.weights == {"a": 0.5, "b": 0.5}


def spans_text(prompt: str) -> list[str]:
    data = prompt.encode()
    return [data[a:b].decode() for a, b in answer_spans(prompt)]


def test_worked_answers_are_found_after_every_earlier_cue():
    qa = "Answer briefly.\n\nQuestion: a?\nAnswer: Paris.\n\nQuestion: b?\nAnswer: Rome\n\nQuestion: c?\nAnswer:"
    assert spans_text(qa) == [" Paris.", " Rome"]
    # The answer on its own line (SQuAD), several lines of working (GSM8K), non-ASCII text (byte offsets).
    squad = "Question:\nctx q1\nAnswer:\nFrance\n\nQuestion:\nctx q2\nAnswer:"
    assert spans_text(squad) == ["\nFrance"]
    maths = "Question: 2+2?\nStep by step\n2+2=4\nThe answer is 4\n\nQuestion: 3+3?\nStep by step\n"
    assert spans_text(maths) == ["\n2+2=4\nThe answer is 4"]
    assert spans_text("Frage: was?\nAntwort: Größe\n\nFrage: wo?\nAntwort:") == [" Größe"]
    # No worked answer: a zero-shot instruction, a cue that occurs once, an empty answer, an empty prompt.
    assert answer_spans("Translate into German.\n\nEnglish: a cat\nGerman:") == []
    assert answer_spans("Q: a?\nAnswer:\n\nQ: b?\nAnswer:") == []
    assert answer_spans("") == answer_spans("\n\n") == []


def test_auto_weights_judge_members_on_the_worked_answers_only():
    # Both members read a two-example prompt. a predicts the questions far better and the answers far worse:
    # on the whole prompt a would be trusted; on the answers, which are the evidence, b is.
    prompt = "Q: x?\nA: Rome\n\nQ: y?\nA:"

    def member(name: str, question_lp: float, answer_lp: float) -> ScriptedMember:
        m = ScriptedMember(name, QA, table({"": {" Rome": 0.6, " Paris": 0.3}}), prompt=prompt)
        rome = set(range(len(m.tokenize("Q: x?\nA:")), len(m.tokenize("Q: x?\nA: Rome"))))
        m.evidence = lambda ctx, wanted=None: [answer_lp if t in rome else question_lp for t in range(1, len(ctx))]  # type: ignore
        return m

    ens = Ensemble([member("a", -0.1, -5.0), member("b", -2.0, -0.5)])
    res = ens.generate(prompt, DecodeConfig(max_words=1, weights="auto"))
    assert res.telemetry.evidence == "answers" and res.telemetry.weights["b"] > 0.99
    # Only the answer's one token counts, per byte of " Rome".
    assert res.telemetry.prompt_nll == pytest.approx({"a": 5.0 / 5, "b": 0.5 / 5})


def test_evidence_is_per_byte_of_the_answers_whatever_the_tokens_around_them():
    # "A: Rome.\n\nQ:" read by two tokenizers that give the answer " Rome." the same probability; one has a
    # token ".\n\n" that runs two easy bytes past the answer. Per byte of the tokens it would look better.
    from adafuse.decoding.evidence import _Tokens

    text = b"A: Rome.\n\nQ:"
    answer = [(text.index(b" Rome"), text.index(b"\n"))]

    def tokens(cuts: list[int]) -> _Tokens:
        edges = [0, *cuts, len(text)]
        return _Tokens(list(range(len(edges) - 1)), list(zip(edges, edges[1:], strict=False)), answer)

    separate = tokens([2, 7, 8, 10])  # "A:", " Rome", ".", "\n\n", "Q:"
    merged = tokens([2, 7, 10])  # "A:", " Rome", ".\n\n", "Q:"
    a = separate.nll_per_byte([-2.0, -0.5, -0.01, -9.0])  # tokens after the first
    b = merged.nll_per_byte([-2.0, -0.51, -9.0])
    assert a == pytest.approx(2.5 / 6) and b == pytest.approx(2.51 / 6)


INSTRUCTED = "Translate the sentence into German. " * 4 + "\n\nEnglish: a cat\nGerman:"


def test_evidence_needs_the_same_text_for_every_member():
    # Under chat each member reads the request in its own template: per byte of different texts is no comparison,
    # so there is no evidence and the given weights stand, although each rendering has instructions to read.
    content = INSTRUCTED.rsplit("\n", 1)[0]  # the instructions and the input, no cue (the template adds its own)
    a = ScriptedMember("a", QA, table(UNSURE_PARIS), prompt=f"U: {content}\nA:")
    a.chat_template = "U: {{ messages[0]['content'] }}\nA:"
    b = ScriptedMember("b", QA, table(SURE_ROME), prompt=f"User: {content}\n\nAssistant:")
    a.prompt_logprob, b.prompt_logprob = -3.0, -2.0
    assert instruction_spans(a.prompt) and instruction_spans(b.prompt)
    cfg = DecodeConfig(max_words=1, beam=1)
    res = Ensemble([a, b]).generate([{"role": "user", "content": content}], cfg, chat=True)
    assert res.telemetry.evidence is None and res.telemetry.weights == {"a": 0.5, "b": 0.5}


# One member, unsure between " Rome" (one token, 0.4) and " Romania" (" Ro" 0.35, then "man" and "ia", both 0.99).
ROME_OR_ROMANIA = {
    "": {" Rome": 0.4, " Ro": 0.35},
    " Ro": {"man": 0.99},
    " Roman": {"ia": 0.99},
    " Romania": {EOS: 0.99},
    " Rome": {EOS: 0.99},
}


def test_a_member_left_voting_alone_writes_its_greedy_answer():
    # Judging its own branches by the per-token mean, a lone member would take " Romania" (trace 9's bias): two
    # members alike, each judging the other's branches, do: (1.05 + 0.02) / 3 < 0.92. With nobody to check it, a
    # lone member writes what it writes alone: " Rome", the same text and rounds as ``single``.
    def lone() -> ScriptedMember:
        return ScriptedMember("m", [" Rome", " Ro", "man", "ia"], table(ROME_OR_ROMANIA), prompt="Q:")

    res = Ensemble([lone()]).generate("Q:", DecodeConfig(beam=2))
    single = Ensemble([lone()]).generate("Q:", DecodeConfig(method="single"))
    assert res.text == single.text == " Rome" and res.finish_reason == single.finish_reason == "eos"
    assert not res.rounds[0].proposals[0].branched and res.rounds[0].fast_path
    twins = Ensemble([lone(), ScriptedMember("n", [" Rome", " Ro", "man", "ia"], table(ROME_OR_ROMANIA), "Q:")])
    fused = twins.generate("Q:", DecodeConfig(beam=2))
    assert fused.text == " Romania" and fused.rounds[0].proposals[0].branched
    # So the study's theta x B grid is the default itself wherever one member is left (docs/RESULTS.md).
    default = Ensemble([lone()]).generate("Q:", DecodeConfig()).to_dict()["rounds"]
    for theta in (0.3, 0.5, 0.7, 0.9):
        for beam in (1, 3):
            grid = Ensemble([lone()]).generate("Q:", DecodeConfig(theta=theta, beam=beam))
            assert grid.to_dict()["rounds"] == default and grid.text == single.text
    # Left alone by the floor: the other member is benched, and the one that stays writes greedily too.
    other = ScriptedMember("o", [" Rome", " Ro", "man", "ia"], table({"": {" Ro": 0.9}, " Ro": {"man": 0.99}}), "Q:")
    res = Ensemble([lone(), other]).generate("Q:", DecodeConfig(beam=2, weights=(0.97, 0.03)))
    assert res.telemetry.benched == ["o"] and res.text == " Rome" and not res.rounds[0].proposals[0].branched
    # Under the default floor (0.05) a member with more of the vote stays, and the round fuses as before.
    res = Ensemble([lone(), other]).generate("Q:", DecodeConfig(beam=2, weights=(0.9, 0.1)))
    assert res.telemetry.benched == [] and {p.member for p in res.rounds[0].proposals} == {"m", "o"}


def test_instructions_are_the_text_before_the_last_paragraph_when_long_enough():
    head = INSTRUCTED[: INSTRUCTED.index("\n\n")].rstrip()
    assert instruction_spans(INSTRUCTED) == [(0, len(head.encode()))]
    assert instruction_spans("Translate into German.\n\nEnglish: a cat\nGerman:") == []  # too short to tell
    assert instruction_spans("x" * MIN_INSTRUCTION_BYTES + "\n\nQ: a?\nA:") == [(0, MIN_INSTRUCTION_BYTES)]
    assert instruction_spans("Q: What is the capital of France?\nA:") == instruction_spans("") == []


def test_instructions_are_the_evidence_of_a_zero_shot_prompt_by_default():
    def member(name: str, lp: float, prompt: str = INSTRUCTED) -> ScriptedMember:
        m = ScriptedMember(name, QA, table({"": {" Rome": 0.6, " Paris": 0.3}}), prompt=prompt)
        m.evidence = lambda ctx, wanted=None: [lp] * (len(ctx) - 1)  # type: ignore[method-assign]
        return m

    ens = Ensemble([member("a", -0.5), member("b", -0.1)])
    cfg = DecodeConfig(max_words=1, beam=1, max_new_tokens=2)
    res = ens.generate(INSTRUCTED, cfg)
    assert res.telemetry.evidence == "instructions" and res.telemetry.weights["b"] > 0.99
    assert res.telemetry.benched == ["a"]
    # The same NLL per token, read over the instructions' tokens only and divided by their bytes.
    n = len(ens.members[0].tokenize(INSTRUCTED[: instruction_spans(INSTRUCTED)[0][1]]))
    head_bytes = instruction_spans(INSTRUCTED)[0][1] - len(
        ens.members[0].token_bytes(ens.members[0].tokenize(INSTRUCTED)[0])
    )
    assert res.telemetry.prompt_nll["b"] == pytest.approx(0.1 * (n - 1) / head_bytes)
    # Instructions too short to tell (under MIN_INSTRUCTION_BYTES): no evidence, the given weights stand.
    short = "Translate into German.\n\nEnglish: a cat\nGerman:"
    res = Ensemble([member("a", -0.5, short), member("b", -0.1, short)]).generate(short, cfg)
    assert res.telemetry.evidence is None and res.telemetry.weights == {"a": 0.5, "b": 0.5}
    # Worked answers come first when there are some.
    fewshot = "Q: x?\nA: Rome\n\nQ: y?\nA:"
    ens = Ensemble([member("a", -0.5, fewshot), member("b", -0.1, fewshot)])
    assert ens.generate(fewshot, cfg).telemetry.evidence == "answers"


def test_a_lone_member_stops_at_the_token_budget_as_a_single_model_does():
    # Forty words of one token each and an end token after them: with a budget of 20 tokens both stop at the budget
    # ("length"), although the last round of 16 tokens could otherwise have run on past it.
    words = [f" w{k}" for k in range(40)]
    rows = {"".join(words[:k]): {words[k]: 0.9} for k in range(40)}
    rows["".join(words)] = {EOS: 0.9}

    def lone() -> ScriptedMember:
        return ScriptedMember("m", words, table(rows), prompt="Q:")

    for budget in (7, 20, 40, 64):
        res = Ensemble([lone()]).generate("Q:", DecodeConfig(max_new_tokens=budget))
        single = Ensemble([lone()]).generate("Q:", DecodeConfig(method="single", max_new_tokens=budget))
        assert (res.text, res.finish_reason) == (single.text, single.finish_reason), budget
    assert len(res.rounds) == 3  # 16 tokens a round, so a stream moves: 16 + 16 + 8 and the end token
    assert res.finish_reason == "eos" and res.text == "".join(words)
