"""How a member drafts a continuation: greedy tokens, cut at word boundaries, stop strings or an end token."""

from __future__ import annotations

from dataclasses import dataclass, field

from adafuse.backends.base import BatchedSteps, Step, TopK
from adafuse.decoding.granularity import boundary_end, line_end
from adafuse.decoding.scoring import Draft
from adafuse.decoding.state import DecodeState
from adafuse.decoding.stopping import find_stop
from adafuse.decoding.words import decode_utf8_prefix, word_ends

#: ``max_words`` for a draft that ends for another reason (a token count, a stop, the end, the budget).
UNBOUNDED_WORDS = 1 << 30
#: a word that has taken this many tokens without ending ends the draft: a guard against endless words
#: ("Henri-Henri-Henri-...").
WORD_TOKEN_CAP = 12


@dataclass
class DraftWriter:
    """Grows one draft token by token and decides where it ends.

    ``max_words``: words to write at most. ``theta``: keep going past a word only while the first token of the next
    word has a margin >= theta (None: never stop for confidence). ``max_tokens``: a hard cap for the whole draft.
    """

    state: DecodeState
    member: int
    max_words: int
    theta: float | None
    max_tokens: int
    #: fixed-granularity drafts: end at the first word boundary once this many tokens are written.
    min_tokens: int | None = None
    #: a word that has taken this many tokens without ending stops the draft (a guard against endless words).
    word_cap: int | None = None
    #: end at the first sentence ("sentence") or paragraph ("paragraph") end (see granularity.boundary_end), or
    #: after the first line and the blank lines that follow it ("line", granularity.line_end).
    boundary: str | None = None
    #: token granularity: the draft is exactly this many tokens, whatever they spell.
    unit_tokens: int | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    _bytes: bytearray = field(default_factory=bytearray)
    _word_start: int = 0
    #: words completed so far, so each token does not decode and scan the draft twice.
    _words: int = 0

    def add(self, top: TopK, token: int) -> Draft | None:
        """Append ``token`` (taken from ``top``); return the finished draft, or None to keep going."""
        self.state.check()
        view = self.state.views[self.member]
        member = view.member
        prev_words = self._words
        self.tokens.append(token)
        self.logprobs.append(top.logprobs[top.ids.index(token)] if token in top.ids else float("-inf"))
        if member.is_eog(token):
            return self._finish(self.text, eos=True)
        self._bytes.extend(member.token_bytes(token))
        text = self.text
        if self.boundary == "line":
            cut = line_end(text)
            if cut is not None:
                return self._finish_at(text[:cut])
        ends = word_ends(text)
        self._words = len(ends)
        if len(ends) > prev_words:
            self._word_start = len(self.tokens) - 1
            if self.boundary is not None:
                cut = boundary_end(text, self.boundary)
                if cut is not None and cut <= ends[-1]:
                    return self._finish_at(text[:cut])
            # The word ends before its trailing whitespace; a stop string starting there is the next round's.
            if len(ends) >= self.max_words:
                return self._finish_at(text[: ends[self.max_words - 1]])
            if self.min_tokens is not None and len(self.tokens) > self.min_tokens:
                return self._finish_at(text[: ends[-1]])
            # This token opened a new word: its distribution's margin decides whether to go on.
            self.margins.append(top.margin)
            if self.theta is not None and top.margin < self.theta:
                return self._finish_at(text[: ends[-1]])
        cut = self._stop_cut(text)
        if cut is not None:
            return self._finish(text[:cut])
        if self.unit_tokens is not None and len(self.tokens) >= self.unit_tokens and text:
            return self._finish(text)
        runaway = self.word_cap is not None and len(self.tokens) - self._word_start >= self.word_cap
        if runaway or len(self.tokens) >= self.max_tokens or self._context_full():
            return self._finish(text)
        return None

    def _finish_at(self, text: str) -> Draft:
        cut = self._stop_cut(text)
        return self._finish(text if cut is None else text[:cut])

    @property
    def text(self) -> str:
        return decode_utf8_prefix(bytes(self._bytes))

    def _stop_cut(self, text: str) -> int | None:
        """Where a stop string or a closed boxed answer ends inside ``text``, looking across the boundary too."""
        cfg = self.state.config
        # Stop strings cut the committed text (the loop), never a candidate: cut drafts would be scored as shorter
        # candidates and change the choice. A member voting alone chooses nothing, so it stops drafting there.
        stops = cfg.stop if len(self.state.active) == 1 else ()
        if not stops and not cfg.stop_at_boxed:
            return None
        committed = self.state.committed
        keep = max((len(s) for s in stops), default=0)
        # A boxed answer can open anywhere in the committed text; a stop string only in its last few characters.
        lead = committed if cfg.stop_at_boxed else committed[-keep:] if keep else ""
        hit = find_stop(lead + text, stops, cfg.stop_at_boxed)
        if hit is None:
            return None
        start = hit.cut - len(lead)
        if hit.reason != "stop":
            return max(start, 1)
        # A lone member's draft runs through the stop string, so the loop ends the answer in this round, on the
        # very tokens it wrote: cut before it, the next round would read the text re-tokenised and could go on
        # differently (a stop string would then change the answer, not only end it).
        stop_len = next(len(s) for s in stops if (lead + text).startswith(s, hit.cut))
        return max(start + stop_len, 1)

    def _context_full(self) -> bool:
        view = self.state.views[self.member]
        return len(self.state.context(self.member)) + len(self.tokens) >= view.member.n_ctx - 1

    def _finish(self, text: str, eos: bool = False) -> Draft:
        # Every token walked is kept, beyond the text too: scoring reuses any prefix of this path for free.
        return Draft(text, eos, self.member, list(self.tokens), list(self.logprobs))


def write_drafts(state: DecodeState, member: int, firsts: list[Step], writers: list[DraftWriter]) -> list[Draft]:
    """One draft per first token. A member that steps several contexts in one call (``next_tokens``: the
    transformers backend) walks the branches in lockstep; others walk one branch after another, so that each
    walk stays on the member's one cache and its numbers are exactly a single walk's (llama.cpp)."""
    mem = state.views[member].member
    if not isinstance(mem, BatchedSteps) or len(writers) < 2:
        return [write_draft(state, member, f, w) for f, w in zip(firsts, writers, strict=True)]
    drafts = [w.add(f.topk, f.token) for f, w in zip(firsts, writers, strict=True)]
    ctx = state.context(member)
    while True:
        walking = [j for j, d in enumerate(drafts) if d is None]
        if not walking:
            return [d for d in drafts if d is not None]
        tops = mem.next_tokens([ctx + writers[j].tokens for j in walking], state.config.top_k)
        for j, top in zip(walking, tops, strict=True):
            drafts[j] = writers[j].add(top, top.ids[0])


def write_draft(state: DecodeState, member: int, first: Step, writer: DraftWriter) -> Draft:
    """Continue greedily from ``first`` until ``writer`` says the draft is done."""
    draft = writer.add(first.topk, first.token)
    ctx = state.context(member)
    mem = state.views[member].member
    while draft is None:
        top = mem.next_token(ctx + writer.tokens, state.config.top_k)
        draft = writer.add(top, top.ids[0])
    return draft
