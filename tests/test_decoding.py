"""Decision logic of the AdaFuse round and the shared loop, on scripted members whose distributions we choose."""

from __future__ import annotations

import math

import pytest
from fakes import EOS, ScriptedMember, table

from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.errors import ConfigError, MemberError, PromptError

PIECES = [" George", " V", ".", " was", " king", " Edward", " Henry", " X", " Y", "\n", " so", " \\boxed{", "7", "}"]

CONFIDENT = {
    "": {" George": 0.95},
    " George": {" V": 0.95},
    " George V": {".": 0.95},
    " George V.": {" was": 0.9},
    " George V. was": {" king": 0.9},
    " George V. was king": {EOS: 0.99},
}


def member(name: str, rows: dict[str, dict[str, float]], **kw) -> ScriptedMember:
    return ScriptedMember(name, PIECES, table(rows), prompt="Q:", **kw)


def twins(rows: dict[str, dict[str, float]], pieces: list[str] = PIECES) -> Ensemble:
    """Two members with the same distributions: the AdaFuse round of one member's proposals (a member left voting
    alone writes its greedy answer instead), judged by both alike."""
    return Ensemble([ScriptedMember(name, pieces, table(rows), prompt="Q:") for name in ("a", "b")])


def test_confident_members_commit_multi_word_spans_on_the_fast_path():
    ens = Ensemble([member("a", CONFIDENT), member("b", CONFIDENT)])
    res = ens.generate("Q:", DecodeConfig(theta=0.7, max_words=3))
    assert res.text == " George V. was king"
    assert res.finish_reason == "eos"
    first = res.rounds[0]
    assert first.committed == " George V. was"  # three words in one round
    assert first.fast_path and first.candidates[0].proposers == ["a", "b"]
    assert not first.proposals[0].branched
    # Margins at the first token of each word it looked at: all confident.
    assert len(first.proposals[0].margins) == 3 and min(first.proposals[0].margins) >= 0.7
    assert res.telemetry.fast_path_rounds == res.telemetry.rounds == 2


def test_max_words_caps_the_span():
    res = twins(CONFIDENT).generate("Q:", DecodeConfig(max_words=1))
    assert [r.committed for r in res.rounds] == [" George", " V.", " was", " king"]


def test_a_later_uncertain_word_ends_the_span_so_the_next_round_branches_there():
    rows = dict(CONFIDENT)
    rows[" George V."] = {" was": 0.5, " king": 0.4}
    res = twins(rows).generate("Q:", DecodeConfig(max_words=3, theta=0.7))
    assert res.rounds[0].committed == " George V."
    assert res.rounds[1].proposals[0].branched


UNSURE = {
    "": {" George": 0.4, " Edward": 0.35, " Henry": 0.2},
    " George": {"\n": 0.99},
    " Edward": {"\n": 0.99},
    " Henry": {"\n": 0.99},
}


def test_uncertain_member_branches_on_its_top_b_first_tokens():
    res = twins(UNSURE).generate("Q:", DecodeConfig(beam=3, stop=("\n",)))
    prop = res.rounds[0].proposals[0]
    assert prop.branched
    assert prop.candidates == [" George", " Edward", " Henry"]
    assert prop.margins[0] == pytest.approx(0.05)
    # Two members alike: their log-probs decide, and they prefer their top token.
    assert res.text == " George" and res.finish_reason == "stop"


def test_beam_one_gives_a_single_candidate():
    res = twins(UNSURE).generate("Q:", DecodeConfig(beam=1, stop=("\n",)))
    assert res.rounds[0].proposals[0].candidates == [" George"]


def test_union_merges_equal_strings_and_keeps_every_proposer():
    ens = Ensemble([member("a", UNSURE), member("b", UNSURE)])
    res = ens.generate("Q:", DecodeConfig(beam=3, stop=("\n",)))
    cands = res.rounds[0].candidates
    assert [c.text for c in cands] == [" George", " Edward", " Henry"]
    assert all(c.proposers == ["a", "b"] for c in cands)
    assert not res.rounds[0].fast_path


A_PREFERS_X = {"": {" X": 0.5, " Y": 0.45}, " X": {"\n": 0.99}, " Y": {"\n": 0.99}}
B_PREFERS_Y = {"": {" Y": 0.6, " X": 0.35}, " X": {"\n": 0.99}, " Y": {"\n": 0.99}}


@pytest.mark.parametrize(("weights", "winner"), [(None, " Y"), ((0.9, 0.1), " X"), ((0.2, 0.8), " Y")])
def test_argmin_uses_every_members_scores_and_the_weights(weights, winner):
    ens = Ensemble([member("a", A_PREFERS_X), member("b", B_PREFERS_Y)])
    res = ens.generate("Q:", DecodeConfig(beam=2, stop=("\n",), weights=weights))
    rnd = res.rounds[0]
    by_text = {c.text: c for c in rnd.candidates}
    # Every member scored every candidate, with its own probabilities (length-normalised NLL, one token each).
    assert by_text[" X"].scores["a"] == pytest.approx(-math.log(0.5))
    assert by_text[" X"].scores["b"] == pytest.approx(-math.log(0.35))
    assert by_text[" Y"].scores["a"] == pytest.approx(-math.log(0.45))
    assert by_text[" Y"].scores["b"] == pytest.approx(-math.log(0.6))
    w = weights or (1, 1)
    for c in rnd.candidates:
        expected = (w[0] * c.scores["a"] + w[1] * c.scores["b"]) / sum(w)
        assert c.combined == pytest.approx(expected)
    assert rnd.winner.text == winner and res.text == winner


def test_members_below_min_weight_neither_propose_nor_score():
    a, b = member("a", A_PREFERS_X), member("b", B_PREFERS_Y)
    res = Ensemble([a, b]).generate("Q:", DecodeConfig(beam=2, stop=("\n",), weights=(0.2, 0.8), min_weight=0.25))
    assert res.telemetry.benched == ["a"]
    assert res.telemetry.weights == pytest.approx({"a": 0.2, "b": 0.8})  # what the request started with
    assert a.stats.forward_calls == 0 and a.stats.tokens_evaluated == 0  # benched before prefill
    for rnd in res.rounds:
        assert [p.member for p in rnd.proposals] == ["b"]
        assert all(set(c.scores) <= {"b"} and c.proposers == ["b"] for c in rnd.candidates)
    assert res.text == " Y"
    # Under the floor nobody is benched: a proposes and scores again, and its weight is what it was.
    res = Ensemble([member("a", A_PREFERS_X), member("b", B_PREFERS_Y)]).generate(
        "Q:", DecodeConfig(beam=2, stop=("\n",), weights=(0.2, 0.8), min_weight=0.2)
    )
    assert res.telemetry.benched == [] and {p.member for p in res.rounds[0].proposals} == {"a", "b"}


def test_a_floor_above_every_weight_keeps_the_heaviest_member():
    ens = Ensemble([member("a", A_PREFERS_X), member("b", B_PREFERS_Y), member("c", UNSURE)])
    res = ens.generate("Q:", DecodeConfig(beam=2, stop=("\n",), weights=(1, 3, 3), min_weight=0.9))
    assert res.telemetry.benched == ["a", "c"]  # b and c tie for heaviest: the first of them stays
    assert res.text == " Y"
    span = ens.generate("Q:", DecodeConfig(beam=2, stop=("\n",), weights=(1, 3, 3), min_weight=0.9, method="span"))
    assert span.telemetry.benched == ["a", "c"]  # every method shares the loop, and the floor


def test_a_non_finite_score_is_an_error_naming_the_member():
    broken = member("b", B_PREFERS_Y)
    broken.score = lambda requests: [[math.nan] * len(cont) for _, cont in requests]  # type: ignore[method-assign]
    ens = Ensemble([member("a", A_PREFERS_X), broken])
    with pytest.raises(MemberError, match=r"'b'.*non-finite score \(nan\) for candidate"):
        ens.generate("Q:", DecodeConfig(beam=1, stop=("\n",)))  # b scores a's " X"


def test_ties_go_to_the_first_proposal_every_time():
    rows = {"": {" X": 0.45, " Y": 0.45}, " X": {"\n": 0.99}, " Y": {"\n": 0.99}}
    outs = set()
    for _ in range(3):
        ens = Ensemble([member("a", rows), member("b", rows)])
        res = ens.generate("Q:", DecodeConfig(beam=2, stop=("\n",)))
        cands = res.rounds[0].candidates
        assert cands[0].combined == cands[1].combined
        outs.add(res.to_json())
        assert res.text == " X"
    assert len({o.split('"wall_seconds"')[0] for o in outs}) == 1


def test_the_proposer_does_not_rescore_its_own_tokens():
    a, b = member("a", A_PREFERS_X), member("b", B_PREFERS_Y)
    Ensemble([a, b]).generate("Q:", DecodeConfig(beam=2, stop=("\n",)))
    # 'a' proposed both " X" and " Y" and already holds their log-probs: its calls are the first-token read
    # plus one per draft continuation, no extra scoring pass for the empty context.
    assert a.calls.count("") == 1


LONG = {
    "": {" George": 0.95},
    " George": {" V": 0.95},
    " George V": {".": 0.95},
    " George V.": {"\n": 0.95},
    " George V.\n": {" so": 0.95},
    " George V.\n so": {" \\boxed{": 0.95},
    " George V.\n so \\boxed{": {"7": 0.95},
    " George V.\n so \\boxed{7": {"}": 0.95},
    " George V.\n so \\boxed{7}": {" was": 0.95},
}


def test_stop_string_is_cut_off():
    res = Ensemble([member("a", LONG)]).generate("Q:", DecodeConfig(stop=("\n",)))
    assert res.text == " George V." and res.finish_reason == "stop"


def test_eos_ends_generation():
    res = Ensemble([member("a", CONFIDENT)]).generate("Q:", DecodeConfig())
    assert res.finish_reason == "eos" and res.rounds[-1].winner.eos


def test_boxed_answer_ends_generation_after_the_closing_brace():
    res = Ensemble([member("a", LONG)]).generate("Q:", DecodeConfig(stop_at_boxed=True))
    assert res.text == " George V.\n so \\boxed{7}" and res.finish_reason == "stop"


def test_token_budget_ends_generation():
    res = Ensemble([member("a", CONFIDENT)]).generate("Q:", DecodeConfig(max_new_tokens=2))
    assert res.finish_reason == "length"
    assert res.text == " George V" and res.telemetry.output_tokens == 2


def test_round_budget_ends_generation():
    res = twins(CONFIDENT).generate("Q:", DecodeConfig(max_words=1, max_rounds=2))
    assert res.finish_reason == "length" and res.text == " George V."


def test_single_method_uses_only_the_chosen_member():
    a, b = member("a", CONFIDENT), member("b", UNSURE)
    res = Ensemble([a, b]).generate("Q:", DecodeConfig(method="single", single_member=1, stop=("\n",)))
    assert res.text == " George" and not a.calls


@pytest.mark.parametrize(
    "kwargs",
    [
        {"theta": 1.5},
        {"theta": -0.1},
        {"beam": 0},
        {"max_words": 0},
        {"max_new_tokens": 0},
        {"method": "vote"},
        {"weights": (1.0, -1.0)},
        {"weights": (0.0, 0.0)},
        {"granularity": "phrase"},
        {"min_weight": 1.0},
        {"top_k": 1},
    ],
)
def test_nonsense_parameters_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        DecodeConfig(**kwargs)


def test_empty_and_overlong_prompts_are_rejected():
    ens = Ensemble([member("a", CONFIDENT, n_ctx=40)])
    with pytest.raises(PromptError, match="empty"):
        ens.generate("   ")
    with pytest.raises(PromptError, match="context window is 40"):
        ens.generate("Q:" + " so" * 30, DecodeConfig(max_new_tokens=16))


def test_weights_must_match_the_member_count():
    ens = Ensemble([member("a", CONFIDENT)])
    with pytest.raises(ConfigError, match="2 weights given for 1 members"):
        ens.generate("Q:", DecodeConfig(weights=(1.0, 2.0)))


def test_on_round_sees_every_commit_and_can_cancel():
    seen: list[str] = []
    res = twins(CONFIDENT).generate("Q:", DecodeConfig(max_words=1), on_round=lambda r, t: seen.append(t))
    assert seen == [" George", " George V.", " George V. was", " George V. was king"] and seen[-1] == res.text

    class Cancelled(Exception):
        pass

    def cancel(rnd, text):
        if len(text) > 8:
            raise Cancelled

    with pytest.raises(Cancelled):
        Ensemble([member("a", CONFIDENT)]).generate("Q:", DecodeConfig(max_words=1), on_round=cancel)


def test_stop_string_spanning_two_rounds_is_found_on_the_committed_text():
    res = Ensemble([member("a", CONFIDENT)]).generate("Q:", DecodeConfig(max_words=1, stop=("V. was",)))
    assert res.text == " George " and res.finish_reason == "stop"


def test_stop_string_inside_a_word_cuts_the_draft_there():
    res = Ensemble([member("a", CONFIDENT)]).generate("Q:", DecodeConfig(max_words=3, stop=("rge",)))
    assert res.text == " Geo" and res.rounds[0].committed == " George"


RUNAWAY = {
    "": {" Pierre": 0.4, " Jacques": 0.35},
    " Pierre": {"\n": 0.99},
    " Jacques": {"-Henri": 0.99},
}
for _k in range(1, 20):
    RUNAWAY[" Jacques" + "-Henri" * _k] = {"-Henri": 0.99}


def test_a_runaway_word_ends_at_the_word_token_cap():
    from adafuse.decoding.proposals import WORD_TOKEN_CAP

    res = twins(RUNAWAY, [*PIECES, " Pierre", " Jacques", "-Henri"]).generate(
        "Q:", DecodeConfig(beam=2, stop=("\n",), max_new_tokens=16, max_rounds=1)
    )
    # The branch into "-Henri-Henri-..." is cut after WORD_TOKEN_CAP tokens, mid-word.
    assert res.rounds[0].proposals[0].candidates == [" Pierre", " Jacques" + "-Henri" * (WORD_TOKEN_CAP - 1)]


def test_the_token_cap_applies_to_each_word_of_a_confident_span():
    from adafuse.decoding.proposals import WORD_TOKEN_CAP

    pieces = [*PIECES, " Pierre", " Jacques", "-Henri"]
    rows = {"": {" Jacques": 0.95}, **{" Jacques" + "-Henri" * k: {"-Henri": 0.99} for k in range(0, 40)}}
    res = twins(rows, pieces).generate("Q:", DecodeConfig(max_words=3, max_rounds=1))
    # Confident, so it may write up to 3 words - but one word may not run past the cap.
    assert res.rounds[0].committed == " Jacques" + "-Henri" * (WORD_TOKEN_CAP - 1)


class ListedMember(ScriptedMember):
    """A scripted member that can list its vocabulary, as a local engine can: token healing sums over all of it."""

    @property
    def n_vocab(self) -> int:
        return len(self.vocab)


@pytest.mark.parametrize("listed", [True, False], ids=["whole-vocabulary", "top-k"])
def test_token_healing_divides_by_the_probability_of_the_last_tokens_text(listed):
    from adafuse.decoding.scoring import score_candidates
    from adafuse.decoding.state import DecodeState, MemberView
    from adafuse.result import Candidate

    # "Answer:" + "\nX" re-tokenises the prompt's ":" into ":\n". After "Answer" the member writes ":\n" (0.6),
    # ": " (0.3) and a lone ":" (0.05); "::" (0.0001) is below every unscripted token (about 0.0006 each).
    rows = {"Answer": {":\n": 0.6, ": ": 0.3, ":": 0.05, "::": 0.0001}, "Answer:\n": {"X": 0.5}, "Answer:": {"\n": 0.2}}
    kind = ListedMember if listed else ScriptedMember
    c = kind("c", ["Answer", ":", ":\n", ": ", "::", "\n", "X"], table(rows))
    state = DecodeState([MemberView(c, "")], DecodeConfig(), (1.0,))
    state.committed = "Answer:"
    cand = Candidate("\nX")
    score_candidates(state, [cand], [], per_token=False)
    healed = cand.scores["c"]
    # Both spellings of the text (":\n" "X", and ":" "\n" "X") over every token that starts with ":". The top-k
    # path reads the member's 20 most likely tokens, where "::" is not; the whole vocabulary has it.
    mass = 0.6 + 0.3 + 0.05 + (0.0001 if listed else 0.0)
    assert healed == pytest.approx(-math.log((0.6 * 0.5 + 0.05 * 0.2 * 0.5) / mass))
    # Divided by the lone ":" alone, the merged spelling would score a negative NLL (the bias of trace 8).
    assert healed >= 0 > -math.log(0.6 * 0.5 / 0.05 + 0.2 * 0.5)


def test_the_vocabulary_index_finds_every_token_starting_with_a_text():
    from adafuse.backends.base import tokens_starting_with

    c = ListedMember("c", ["Answer", ":", ":\n", ": ", "::", "\n"], table({}))
    found = {c.vocab[t] for t in tokens_starting_with(c, b":")}
    assert found == {":", ":\n", ": ", "::"}
    assert tokens_starting_with(c, b"Answer!") == []
    assert tokens_starting_with(ScriptedMember("s", [":"], table({})), b":") is None  # cannot list: None
