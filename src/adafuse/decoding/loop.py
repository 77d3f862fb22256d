"""The one generation loop every strategy shares: round -> commit -> stop? -> round ...

A strategy is a function ``(state, round_index) -> Round`` that proposes and selects; the loop owns committing,
stop strings, end tokens, budgets and the telemetry, so every method is measured the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from adafuse.decoding.evidence import apply_auto_weights, prompt_nll_per_byte
from adafuse.decoding.guard import BudgetSpent
from adafuse.decoding.parallel import map_active
from adafuse.decoding.state import DecodeState
from adafuse.decoding.stopping import find_stop
from adafuse.decoding.words import decode_utf8_prefix
from adafuse.result import MemberTelemetry, Result, Round, Telemetry

if TYPE_CHECKING:
    from adafuse.decoding.text_proposals import TextProposer

Strategy = Callable[[DecodeState, int], Round]
#: called after every commit with the round and the text committed so far (streaming, progress, cancellation:
#: an exception raised here ends the generation).
OnRound = Callable[[Round, str], None]


def run(state: DecodeState, strategy: Strategy, method: str, on_round: OnRound | None = None) -> Result:
    cfg = state.config
    start = time.perf_counter()
    before = {v.name: v.member.stats.snapshot() for v in state.views}
    prompt_tokens = {state.views[i].name: len(state.views[i].ids("")) for i in state.active}
    rounds = state.rounds
    evidence: tuple[dict[str, float], str] | None = None
    weights = {state.views[i].name: state.weights[i] for i in state.active}
    benched: list[str] = []
    finish = ""
    for text in state.texts:
        text.prepare(state)  # the endpoints write while the members read the prompt
    try:
        # The evidence read comes first: it may leave a member's cache inside the prompt, which prefill completes.
        if state.controller is not None:
            # The controller reads the evidence as one signal among others and decides who sits out itself.
            state.evidence = prompt_nll_per_byte(state)
            if state.evidence is not None:
                evidence = ({state.views[i].name: v for i, v in state.evidence[0].items()}, state.evidence[1])
        else:
            evidence = apply_auto_weights(state) if cfg.auto_weights else None
            weights = {state.views[i].name: state.weights[i] for i in state.active}
            benched = bench(state)
        state.check()
        map_active(state, lambda i: state.views[i].member.prefill(state.context(i)))
        while not finish:
            if cfg.max_rounds is not None and len(rounds) >= cfg.max_rounds:
                finish = "length"
                break
            rnd = strategy(state, len(rounds))
            rounds.append(rnd)
            state.commit(rnd.committed)
            finish = _finish_reason(state, rnd)
            if on_round is not None:
                on_round(rnd, state.committed)
    except BudgetSpent:
        # Inside a round: the round is dropped and the answer is what was committed before it.
        finish = "budget"
    finally:
        for text in state.texts:
            text.cancel()
    if state.controller is not None:
        # The weights its route choice gave (or today's rule, where it abstained), and who sat out.
        weights = {v.name: state.weights[i] for i, v in enumerate(state.views) if state.weights[i] > 0}
        benched = list(rounds[0].signals.get("benched", [])) if rounds else []
    telemetry = Telemetry(
        members=[
            MemberTelemetry(
                name=v.name,
                forward_calls=v.member.stats.forward_calls - before[v.name].forward_calls,
                tokens_evaluated=v.member.stats.tokens_evaluated - before[v.name].tokens_evaluated,
                tokens_reused=v.member.stats.tokens_reused - before[v.name].tokens_reused,
                prompt_tokens=prompt_tokens.get(v.name, 0),
            )
            for v in state.views
        ],
        rounds=len(rounds),
        fast_path_rounds=sum(r.fast_path for r in rounds),
        fused_rounds=sum(not r.fast_path for r in rounds),
        output_tokens=output_tokens(state),
        wall_seconds=time.perf_counter() - start,
        weights=weights,
        benched=benched,
        prompt_nll=evidence[0] if evidence else {},
        evidence=evidence[1] if evidence else None,
        controller=state.controller.digest if state.controller is not None else None,
        api={t.name: _api_telemetry(t, rounds) for t in state.texts},
    )
    for t in state.texts:
        if t.usage.failures:
            telemetry.dropped[t.name] = t.usage.failures[-1]
    return Result(
        text=state.committed,
        finish_reason=finish,
        rounds=rounds,
        telemetry=telemetry,
        method=method,
        models=[v.name for v in state.views] + [t.name for t in state.texts],
        config=cfg.to_dict(),
    )


def _api_telemetry(text: TextProposer, rounds: list[Round]) -> dict[str, Any]:
    """A text-only member's cost as its API reports it, and how its proposals fared."""
    usage = text.usage
    proposed = [r for r in rounds if any(p.member == text.name for p in r.proposals)]
    return {
        "calls": usage.calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "seconds": usage.seconds,
        "rounds_proposed": len(proposed),
        "rounds_won": sum(text.name in r.winner.proposers for r in proposed),
        "sat_out": text.out,
    }


def bench(state: DecodeState) -> list[str]:
    """Take the members whose weight is below ``min_weight`` out of ``state.active``; returns their names.

    The heaviest member always stays (the first of them on a tie), so a floor above every weight leaves one.
    """
    floor = state.config.min_weight
    if floor <= 0 or len(state.active) < 2:
        return []
    total = sum(state.weights[i] for i in state.active)
    heaviest = max(state.active, key=lambda i: state.weights[i])
    out = [i for i in state.active if i != heaviest and state.weights[i] < floor * total]
    state.active = [i for i in state.active if i not in out]
    return [state.views[i].name for i in out]


def _finish_reason(state: DecodeState, rnd: Round) -> str:
    cfg = state.config
    # The budget cuts first: a stop string past it is not part of the answer it would have ended.
    written = output_tokens(state)
    if written > cfg.max_new_tokens:
        _truncate_to_budget(state)
    hit = find_stop(state.committed, cfg.stop, cfg.stop_at_boxed)
    if hit is not None:
        state.committed = state.committed[: hit.cut]
        return "stop"
    if rnd.winner.eos and written <= cfg.max_new_tokens:
        return "eos"
    if written >= cfg.max_new_tokens:
        return "length"
    if not rnd.committed:
        # A round that commits nothing would repeat forever; only a degenerate member gets here.
        return "length"
    for i in state.active:
        if len(state.context(i)) >= state.views[i].member.n_ctx - 1:
            return "length"
    return ""


def reference(state: DecodeState) -> int:
    """The member whose tokenizer counts the output budget: the first one still voting."""
    return state.active[0]


def output_tokens(state: DecodeState) -> int:
    view = state.views[reference(state)]
    return max(0, len(view.ids(state.committed)) - len(view.ids("")))


def _truncate_to_budget(state: DecodeState) -> None:
    view = state.views[reference(state)]
    start = len(view.ids(""))
    ids = view.ids(state.committed)
    if len(ids) - start <= state.config.max_new_tokens:
        return
    keep = ids[start : start + state.config.max_new_tokens]
    text = decode_utf8_prefix(b"".join(view.member.token_bytes(t) for t in keep))
    # Tokens detokenise with their leading spaces, so the kept text is a prefix of the committed text.
    if state.committed.startswith(text):
        state.committed = text
