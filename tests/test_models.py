"""The three real built-in models through llama.cpp: scoring at tokenizer boundaries, a full ensemble run,
determinism and the prefix cache."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, replace

import numpy as np
import pytest
from fakes import stable_json

from adafuse.config import DecodeConfig
from adafuse.decoding.scoring import score_candidates
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.ensemble import Ensemble
from adafuse.evaluation.tasks import load_task
from adafuse.result import Candidate

pytestmark = pytest.mark.models

# (committed context, candidate): leading spaces, newlines, merges across the boundary, multi-byte text.
BOUNDARY_CASES = [
    ("Question: Which British king married Mary of Teck?\nAnswer:", " George V."),
    ("Question: Which British king married Mary of Teck?\nAnswer: George", " V."),
    ("Line one\n", "Line two"),
    ("Line one", "\n\nLine two"),
    ("3 +", " 4 = 7"),
    ("Mary of Te", "ck"),
    ("hello wor", "ld"),
    ("George V.", "\n"),
    ("The answer is 12", "34."),
    ("Le café", " était crème brûlée"),
    # Qwen-Coder merges ":\n" (and Gemma ":\n\n"): the prompt's own ":" re-tokenises (docs/RESULTS.md, trace 8).
    ("Context: ...\nAnswer:", "\n1962"),
    ("Context: ...\nAnswer:", "\n\n"),
]


def stepwise(member, ids, start):
    """Sum of next-token log-probs of ids[start:], each read from the member one position at a time."""
    return sum(member.logprobs_of(ids[:j], [ids[j]])[0] for j in range(start, len(ids)))


def prefix_mass(member, ctx, token):
    """log P(the text goes on with ``token``'s text | ctx), summed over the whole vocabulary."""
    text = member.token_bytes(token)
    ids = [t for t in range(member.n_vocab) if not member.is_eog(t) and member.token_bytes(t).startswith(text)]
    return float(np.logaddexp.reduce(member.logprobs_of(ctx, ids)))


def unhealed_logprob(member, ctx, full, head, extension):
    """log P(candidate) as scored before token healing: a merge across the boundary divided by the probability of
    the context's re-tokenised tail *tokens* (not of their text), plus the unchanged context's own spelling."""
    return float(np.logaddexp(stepwise(member, full, head) - stepwise(member, ctx, head), extension))


@pytest.mark.parametrize(("context", "candidate"), BOUNDARY_CASES)
def test_boundary_correct_scoring_matches_step_by_step_logprobs(zoo_members, context, candidate):
    views = [MemberView(m, "") for m in zoo_members]
    state = DecodeState(views, DecodeConfig(), (1 / 3,) * 3, committed=context)
    cand = Candidate(candidate)
    score_candidates(state, [cand], [], per_token=False)
    for m in zoo_members:
        ctx = m.tokenize(context)
        full = m.tokenize(context + candidate)
        head = next((i for i, (a, b) in enumerate(zip(ctx, full, strict=False)) if a != b), min(len(ctx), len(full)))
        piece = m.tokenize(candidate, bos=False)
        other_spelling = head < len(ctx) or piece != full[head:]
        extension = stepwise(m, ctx + piece, len(ctx))
        if head < len(ctx):
            # Token healing: both spellings over the probability of the last token's *text* (every token that
            # starts with it, over the whole vocabulary, as the decoder sums for a local member).
            mass = prefix_mass(m, ctx[:-1], ctx[-1])
            canonical = stepwise(m, full, head) - stepwise(m, ctx[:-1], head) - mass
            expected = float(np.logaddexp(canonical, stepwise(m, ctx, len(ctx) - 1) - mass + extension))
            assert cand.scores[m.name] == pytest.approx(-expected, abs=1e-4), m.name
            # The text's probability: never above 1.
            assert cand.scores[m.name] >= -1e-4, m.name
            continue
        expected = stepwise(m, full, head) - stepwise(m, ctx, head)
        if other_spelling:
            # The same text spelled as the unchanged context plus the candidate's own tokens counts too.
            expected = float(np.logaddexp(expected, extension))
        assert cand.scores[m.name] == pytest.approx(-expected, abs=1e-4), m.name


def test_without_healing_a_merge_at_the_prompt_boundary_would_give_a_negative_nll(zoo_members):
    # The bias token healing removes (docs/RESULTS.md, trace 8): Qwen-Coder writes ":\n" as one token, so a
    # candidate starting a new line after "Answer:" was divided by the probability of a lone ":" token.
    qwen = next(m for m in zoo_members if m.name.startswith("qwen"))
    context = (
        "Question: When did the Berlin Wall fall?\nAnswer:\n1989\n\n"
        "Question: When did Apollo 11 land on the Moon?\nAnswer:\n1969\n\n"
        "Question: In which year did Yuri Gagarin fly to space?\nAnswer:"
    )
    ctx, full = qwen.tokenize(context), qwen.tokenize(context + "\n1962")
    head = next(i for i, (a, b) in enumerate(zip(ctx, full, strict=False)) if a != b)
    assert head < len(ctx)  # the merge
    state = DecodeState([MemberView(qwen, "")], DecodeConfig(), (1.0,), committed=context)
    cand = Candidate("\n1962")
    score_candidates(state, [cand], [], per_token=False)
    extension = stepwise(qwen, ctx + qwen.tokenize("\n1962", bos=False), len(ctx))
    assert -unhealed_logprob(qwen, ctx, full, head, extension) < 0 <= cand.scores[qwen.name]


def test_isolated_tokenisation_would_differ_so_the_boundary_matters(zoo_members):
    # The reference code's bug: tokenising a candidate alone drops the leading-space token form.
    for m in zoo_members:
        ctx = m.tokenize("Answer:")
        full = m.tokenize("Answer: George")
        alone = m.tokenize("George")
        assert full[: len(ctx)] == ctx
        assert full[len(ctx) :] != alone[-len(full[len(ctx) :]) :], m.name


def test_merge_across_the_boundary_is_handled(zoo_members):
    # "wor" + "ld" re-tokenises the context's last token in every one of these vocabularies, and the
    # boundary case of the scoring test above covers it.
    for m in zoo_members:
        ctx = m.tokenize("hello wor")
        assert m.tokenize("hello world")[: len(ctx)] != ctx, m.name


def run_ensemble(members, prompt):
    # Equal weights (the paper's setting): every member proposes and scores in every round. The default's
    # evidence weights would bench two of the three on this prompt (tested on their own below).
    ens = Ensemble(members)
    return ens.generate(prompt, DecodeConfig(weights="equal", stop=("\n",), max_new_tokens=24))


def test_ensemble_answers_a_triviaqa_prompt_with_a_complete_trace(zoo_members, trivia_prompt):
    res = run_ensemble(zoo_members, trivia_prompt)
    assert res.text.strip().rstrip(".") == "Paris", res.text  # in the worked answers' format: " Paris."
    assert res.finish_reason in ("stop", "eos")
    names = [m.name for m in zoo_members]
    assert res.models == names
    assert "".join(r.committed for r in res.rounds).startswith(res.text)
    for r in res.rounds:
        assert [p.member for p in r.proposals] == names
        assert all(p.margins and all(0 <= x <= 1 for x in p.margins) for p in r.proposals)
        assert 0 <= r.chosen < len(r.candidates) and r.committed == r.winner.text
        assert {c.text for c in r.candidates} == {t for p in r.proposals for t in p.candidates}
        for c in r.candidates:
            assert c.proposers
            if not r.fast_path:
                assert set(c.scores) == set(names) and c.combined is not None
        if not r.fast_path:
            assert r.winner.combined == min(c.combined for c in r.candidates)
    tel = res.telemetry
    assert tel.rounds == len(res.rounds) == tel.fast_path_rounds + tel.fused_rounds
    assert [m.name for m in tel.members] == names
    assert all(m.forward_calls > 0 and m.tokens_evaluated > 0 for m in tel.members)


def test_output_is_identical_across_runs_and_the_prefix_cache_is_used(zoo_members, trivia_prompt):
    first = run_ensemble(zoo_members, trivia_prompt)
    second = run_ensemble(zoo_members, trivia_prompt)

    assert stable_json(first) == stable_json(second)
    for tel in second.telemetry.members:
        # The prompt is cached from the first run: only its part after the last whole 64-token chunk is decoded
        # again (so that the answer cannot depend on history), then each round costs a few tokens, not a prefill.
        redone = tel.prompt_tokens % 64 or 64
        assert tel.tokens_reused >= tel.prompt_tokens - redone
        per_round = (tel.tokens_evaluated - redone) / second.telemetry.rounds
        assert per_round < 20, (tel, second.telemetry.rounds)
        assert tel.tokens_evaluated < tel.prompt_tokens / 2


def test_prefix_cache_turns_a_grown_context_into_new_tokens_only(zoo_members):
    from adafuse.backends.prefix_cache import CHUNK

    m = zoo_members[0]
    text = "The quick brown fox jumps over the lazy dog."
    ctx = m.tokenize(text * 10)
    m.prefill(ctx)  # a request starts here: what follows its prompt is the request's own text
    before = m.stats.snapshot()
    grown = m.tokenize(text * 10 + " And then")
    assert grown[: len(ctx)] == ctx
    m.next_token(grown, 5)
    assert m.stats.tokens_evaluated - before.tokens_evaluated == len(grown) - len(ctx)
    # A grown text that re-tokenises the prompt's end ("dog. " + "And" -> "dog." + " And") reads the prompt's last
    # chunk again whole, as prefill read it, so that no number depends on where the cache walked.
    ctx = m.tokenize(text * 10 + " ")
    m.prefill(ctx)
    before = m.stats.snapshot()
    grown = m.tokenize(text * 10 + " And then")
    m.next_token(grown, 5)
    assert m.stats.tokens_evaluated - before.tokens_evaluated <= len(grown) - len(ctx) + 1 + len(ctx) % CHUNK
    assert m.stats.forward_calls - before.forward_calls <= len(grown) - len(ctx) + 2


def test_a_tokens_numbers_depend_only_on_the_tokens_before_it_not_on_where_the_cache_walked(zoo_members, trivia_prompt):
    """Bounded scoring (decoding/bounded.py) stops candidates part way and steps others token by token: its
    numbers must be full scoring's, so a row past the prompt is the same whether reached in one walk, one token at
    a time, after another candidate, or after a walk back into the prompt (the token-healing case)."""
    for m in zoo_members:
        prompt = m.tokenize(trivia_prompt)
        cand = m.tokenize(trivia_prompt + " The city of Paris, on the Seine.")[len(prompt) :]
        other = m.tokenize(trivia_prompt + " Lyon is not it.")[len(prompt) :]
        full = prompt + cand
        everything = list(range(m.n_vocab))
        m.prefill(prompt)
        walked = m.logprobs_of(full, everything)
        by_steps = []
        m.prefill(prompt)
        for k in range(len(cand) + 1):
            by_steps = m.logprobs_of(prompt + cand[:k], everything)
        m.prefill(prompt)
        m.logprobs_of(prompt + other, everything)
        m.logprobs_of(prompt[:-3], everything)  # back into the prompt, and a shorter context's row
        after_detours = m.logprobs_of(full, everything)
        assert walked == by_steps == after_detours, m.name  # bit for bit


def test_a_conversations_next_turn_gets_the_numbers_a_fresh_member_gets():
    """The next turn's prompt holds the last turn's prompt and answer; the answer was decoded one token at a
    time, which gives other numbers than the chunks a fresh member decodes a prompt in, so it is not reused."""
    from adafuse.backends import load_member

    used, fresh = (load_member("smollm2-135m", n_ctx=1024, n_threads=2) for _ in range(2))
    try:
        turn = used.tokenize("The history of the British monarchy is long and full of surprises. " * 8)[:100]
        used.prefill(turn)
        said = [s.token for s in used.greedy(turn, 48, 1, until=lambda toks: False)]
        assert len(turn) + len(said) > 128  # the answer fills a chunk the next prompt would reuse
        following = turn + said + used.tokenize(" Tell me more about the queens.", bos=False)
        rows = []
        for m in (used, fresh):
            m.prefill(following)
            rows.append(m.logprobs_of(following, list(range(m.n_vocab))))
        assert rows[0] == rows[1]  # bit for bit
    finally:
        used.close()
        fresh.close()


def test_chat_prompts_use_each_members_own_template_or_the_plain_layout(zoo_members):
    ens = Ensemble(zoo_members)
    rendered = dict(zip(ens.names, ens.prompts("Name a colour.", chat=True), strict=True))
    smol, special = rendered["smollm2-135m"]
    assert special and "<|im_start|>user\nName a colour.<|im_end|>" in smol and smol.endswith("<|im_start|>assistant\n")
    qwen, _ = rendered["qwen2.5-coder-0.5b"]
    assert "<|im_start|>user\nName a colour.<|im_end|>" in qwen and qwen.endswith("<|im_start|>assistant\n")
    # Gemma 3 270M is a base model without a chat template: the documented plain layout.
    assert rendered["gemma3-270m"] == ("User: Name a colour.\n\nAssistant:", False)
    # The template's special tokens are parsed as special tokens, not spelled out as text.
    smol_member = zoo_members[0]
    assert smol_member.tokenize(smol, special=True).count(1) == 2  # <|im_start|> is id 1 in SmolLM2
    res = ens.generate("Name a colour.", DecodeConfig(max_new_tokens=8), chat=True)
    assert res.text.strip() and res.telemetry.rounds >= 1


def test_auto_weights_depend_on_the_worked_answers_only_and_are_read_once(zoo_members, fixture_data):
    # Two questions of very different lengths after the same worked answers: the same weights (whole 64-token
    # blocks only would let the question's length decide which answers count), and the second
    # request costs exactly what it costs with those weights given: its evidence read is remembered.
    fewshot = (fixture_data / "triviaqa" / "prompt.txt").read_text().strip()
    short = fewshot + "\n\nQuestion: Who wrote Hamlet?\nAnswer:"
    long = fewshot + "\n\nQuestion: " + "Which river, " * 30 + "flows through Paris?\nAnswer:"
    ens = Ensemble(zoo_members)
    cfg = DecodeConfig(weights="auto", max_new_tokens=6, stop=("\n",))
    a, b = ens.generate(short, cfg), ens.generate(long, cfg)
    assert a.telemetry.evidence == b.telemetry.evidence == "answers"
    assert a.telemetry.prompt_nll == b.telemetry.prompt_nll
    assert a.telemetry.weights == b.telemetry.weights
    given = replace(cfg, weights=tuple(b.telemetry.weights[m.name] for m in zoo_members))
    c, d = ens.generate(short, given), ens.generate(long, given)
    assert (c.text, d.text) == (a.text, b.text)
    assert [m.tokens_evaluated for m in d.telemetry.members] == [m.tokens_evaluated for m in b.telemetry.members]


def test_members_benched_by_sharp_evidence_cost_nothing_after_the_read(zoo_members, fixture_data):
    # Sharp evidence weights put ~1e-4 on two of the three members; with a floor they sit the request out: no
    # proposals, no scores, and once a task's few-shot part has been read, not one token evaluated.
    fewshot = (fixture_data / "triviaqa" / "prompt.txt").read_text().strip()
    ens = Ensemble(zoo_members)
    cfg = DecodeConfig(weights="auto", auto_sharpness=100, min_weight=0.01, max_new_tokens=8, stop=("\n",))
    first = ens.generate(fewshot + "\n\nQuestion: Who wrote Hamlet?\nAnswer:", cfg)
    second = ens.generate(fewshot + "\n\nQuestion: Which river flows through Paris?\nAnswer:", cfg)
    trusted = max(first.telemetry.weights, key=first.telemetry.weights.get)
    assert sorted(second.telemetry.benched) == sorted(m.name for m in zoo_members if m.name != trusted)
    assert second.telemetry.weights == first.telemetry.weights and set(second.telemetry.weights) == {
        m.name for m in zoo_members
    }
    for m in second.telemetry.members:
        assert (m.tokens_evaluated == 0) == (m.name != trusted)
    for rnd in second.rounds:
        assert {p.member for p in rnd.proposals} == {trusted}
        assert all(set(c.scores) <= {trusted} for c in rnd.candidates)
    # The same request again, on members that have done other work since: the same text.
    assert ens.generate(fewshot + "\n\nQuestion: Which river flows through Paris?\nAnswer:", cfg).text == second.text
    # Left alone, the trusted member writes what it writes as a single model (the default floor benches the same).
    alone = replace(cfg, method="single", single_member=[m.name for m in zoo_members].index(trusted))
    default = DecodeConfig(max_new_tokens=8, stop=("\n",))
    for question in ("Who wrote Hamlet?", "Which river flows through Paris?"):
        prompt = fewshot + f"\n\nQuestion: {question}\nAnswer:"
        assert ens.generate(prompt, default).text == ens.generate(prompt, alone).text


def test_instructions_evidence_on_a_zero_shot_translation_prompt(zoo_members, benchmark_dir):
    # The Flores prompts have no worked answers: by default their English instructions are read, the member that
    # models them best is trusted and members under the floor are benched; left alone, the trusted member writes
    # its single-model answer.
    names = [m.name for m in zoo_members]
    ens = Ensemble(zoo_members)
    cfg = DecodeConfig(max_new_tokens=6, stop=("\n",))
    for direction in ("flores-en-de", "flores-de-en"):
        task = load_task(direction, benchmark_dir)
        prompt = task.build_prompt(task.items(0, 1)[0].question)
        res = ens.generate(prompt, cfg)
        tel = res.telemetry
        assert tel.evidence == "instructions" and set(tel.prompt_nll) == set(names)
        trusted = min(tel.prompt_nll, key=tel.prompt_nll.get)
        assert max(tel.weights, key=tel.weights.get) == trusted
        assert sorted(tel.benched) == sorted(n for n in names if tel.weights[n] < cfg.min_weight)
        if len(tel.benched) == len(names) - 1:
            single = replace(cfg, method="single", single_member=names.index(trusted))
            assert res.text == ens.generate(prompt, single).text


def test_auto_weights_and_the_adaptive_unit_run_on_the_real_models_deterministically(zoo_members, trivia_prompt):
    # Automatic weights from the worked answers and the adaptive unit on llama.cpp members (nobody benched, so
    # every member takes part in the rounds these options shape).
    cfg = DecodeConfig(weights="auto", granularity="adaptive", stop=("\n",), max_new_tokens=24, min_weight=0.0)
    first = Ensemble(zoo_members).generate(trivia_prompt, cfg)
    Ensemble(zoo_members).generate(trivia_prompt + " Paris", DecodeConfig(max_new_tokens=4))  # something else
    again = Ensemble(zoo_members).generate(trivia_prompt, cfg)
    assert first.text == again.text
    assert [asdict(r) for r in first.rounds] == [asdict(r) for r in again.rounds]
    assert first.telemetry.weights == again.telemetry.weights
    assert first.telemetry.prompt_nll == again.telemetry.prompt_nll
    tel = first.telemetry
    assert set(tel.prompt_nll) == {m.name for m in zoo_members}
    assert tel.evidence == "answers"  # the TriviaQA prompt's worked answers, on every member's tokens
    assert all(0.1 < v < 5.0 for v in tel.prompt_nll.values())  # nats per byte of a real prompt
    assert sum(tel.weights.values()) == pytest.approx(1.0)
    best = min(tel.prompt_nll, key=tel.prompt_nll.get)
    assert max(tel.weights, key=tel.weights.get) == best
    assert {r.unit for r in first.rounds} <= {"token", "word", "sentence", "paragraph"}


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_the_kv_cache_grows_on_demand_without_changing_a_number(name, monkeypatch):
    """A context starts with 512 cells and doubles when a request needs more; the cells move, so every logit
    equals a context created at full size (Gemma: sliding-window and global caches both move)."""
    from adafuse.backends import llamacpp
    from adafuse.backends.zoo import resolve_model_path

    path = resolve_model_path(name)
    text = "The history of the British monarchy is long and full of surprises. " * 60
    grown = llamacpp.LlamaCppMember(path, n_ctx=2048, n_threads=2)
    monkeypatch.setattr(llamacpp, "_INITIAL_CTX", 2048)
    full = llamacpp.LlamaCppMember(path, n_ctx=2048, n_threads=2)
    try:
        assert (grown._ctx_size, full._ctx_size) == (512, 2048)
        for m in (grown, full):
            ctx = m.tokenize(text)
            assert 512 < len(ctx) < 1024
            m.prefill(ctx[:300])
            m.next_token(ctx[:300], 5)
        assert grown._ctx_size == 512
        rows = []
        for m in (grown, full):
            ctx = m.tokenize(text)
            steps = m.greedy(ctx, 12, 5)  # crosses 512 cells: the cache moves mid-request
            ids = ctx + [s.token for s in steps]
            rows.append(([s.token for s in steps], m.logprobs_of(ids, list(range(m.n_vocab)))))
        assert grown._ctx_size == 1024
        assert rows[0][0] == rows[1][0]
        assert rows[0][1] == rows[1][1]  # bit for bit
    finally:
        grown.close()
        full.close()


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"])
def test_an_evidence_read_of_some_rows_gives_the_bits_of_a_read_of_every_row(name, fixture_data):
    """A read asks llama.cpp only for the rows its positions need (its output buffer holds every row asked for);
    those rows are bit for bit the ones a read of every row gives, part chunks of every length included, and a
    later read that needs rows the cache skipped reads them again."""
    from adafuse.backends import llamacpp
    from adafuse.backends.zoo import resolve_model_path

    path = resolve_model_path(name)
    every = llamacpp.LlamaCppMember(path, n_ctx=2048, n_threads=2)
    some = llamacpp.LlamaCppMember(path, n_ctx=2048, n_threads=1)
    rng = random.Random(0)
    try:
        ids = every.tokenize((fixture_data / "triviaqa" / "prompt.txt").read_text())
        assert len(ids) > 2 * 64
        for n in range(len(ids) - 3, len(ids) + 1):  # the part chunk ends 0-3 rows past a multiple of 4
            full = every.evidence(ids[:n])
            wanted = sorted(rng.sample(range(1, n), 12))
            part = some.evidence(ids[:n], wanted)
            assert part is not None and full is not None
            assert [part[t - 1] for t in wanted] == [full[t - 1] for t in wanted]
            assert sum(math.isnan(x) for x in part) > n // 2
    finally:
        every.close()
        some.close()
