"""A scripted member for unit-testing decision logic: its next-token distributions are chosen by the test.

Fakes prove the decoder's decisions (expansion, branching, union, scoring, stopping) on distributions we
control; the real-model tests prove the same code on llama.cpp.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from adafuse.backends.base import MemberStats, Step, TopK, greedy_by_steps

EOS = "<eos>"
Script = Callable[[str], dict[str, float]]


class ScriptedMember:
    """Tokenizes by longest match over ``pieces``; ``script(text so far after the prompt)`` gives next-piece probs.

    Pieces the script does not mention share a tiny probability mass, so every token has a finite log-prob.
    """

    def __init__(self, name: str, pieces: Sequence[str], script: Script, prompt: str = "", n_ctx: int = 4096):
        self.name = name
        self.vocab = [EOS, *dict.fromkeys(p for p in pieces if p != EOS)]
        for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!\n{}\\$=+-()'\"":
            if ch not in self.vocab:
                self.vocab.append(ch)
        self.index = {p: i for i, p in enumerate(self.vocab)}
        self.script = script
        self.prompt = prompt
        self.n_ctx = n_ctx
        self.stats = MemberStats()
        self.chat_template: str | None = None
        self.calls: list[str] = []
        self._cache: list[int] = []
        #: what ``evidence`` reports (the log-likelihood of the prompt); None: this member cannot tell.
        self.prompt_logprob: float | None = None

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(text):
            for n in range(min(len(text) - i, 12), 0, -1):
                if text[i : i + n] in self.index:
                    ids.append(self.index[text[i : i + n]])
                    i += n
                    break
            else:
                raise ValueError(f"{self.name}: cannot tokenize {text[i]!r}")
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        return b"" if token_id == 0 else self.vocab[token_id].encode()

    def is_eog(self, token_id: int) -> bool:
        return token_id == 0

    @property
    def eos_id(self) -> int:
        return 0

    def special_text(self, which: str) -> str:
        return ""

    def _logprobs(self, context: Sequence[int]) -> list[float]:
        text = "".join(self.vocab[t] for t in context)
        assert text.startswith(self.prompt), (text, self.prompt)
        after = text[len(self.prompt) :]
        self.calls.append(after)
        probs = self.script(after)
        rest = max(1e-9, 1.0 - sum(probs.values()))
        others = len(self.vocab) - len(probs)
        out = [math.log(rest / others)] * len(self.vocab)
        for piece, p in probs.items():
            out[self.index[piece]] = math.log(p)
        # Count what a prefix cache would evaluate: only tokens beyond the common prefix.
        keep = 0
        while keep < min(len(self._cache), len(context)) and self._cache[keep] == context[keep]:
            keep += 1
        self.stats.forward_calls += 1
        self.stats.tokens_evaluated += max(1, len(context) - keep)
        self._cache = list(context)
        return out

    def prefill(self, context: Sequence[int]) -> None:
        self.stats.forward_calls += 1
        self.stats.tokens_evaluated += len(context)
        self._cache = list(context)

    def evidence(self, context: Sequence[int], wanted: Sequence[int] | None = None) -> list[float] | None:
        if self.prompt_logprob is None:
            return None
        # Spread evenly over the prompt's tokens after the first, so they sum to ``prompt_logprob``.
        n = max(1, len(context) - 1)
        return [self.prompt_logprob / n] * n

    def next_token(self, context: Sequence[int], k: int) -> TopK:
        lps = self._logprobs(context)
        order = sorted(range(len(lps)), key=lambda t: (-lps[t], t))[:k]
        return TopK(tuple(order), tuple(lps[t] for t in order))

    def logprobs_of(self, context: Sequence[int], token_ids: Sequence[int]) -> list[float]:
        lps = self._logprobs(context)
        return [lps[t] for t in token_ids]

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        out = []
        for context, cont in requests:
            ctx = list(context)
            lps = []
            for tok in cont:
                lps.append(self._logprobs(ctx)[tok])
                ctx.append(tok)
            out.append(lps)
        return out

    def greedy(self, context, max_tokens, k, until=None) -> list[Step]:
        return greedy_by_steps(self, context, max_tokens, k, until)

    def close(self) -> None:
        pass


def table(rows: dict[str, dict[str, float]], default: dict[str, float] | None = None) -> Script:
    """A script from a dict: text so far -> next-piece probabilities (``default`` elsewhere, else EOS)."""

    def script(text: str) -> dict[str, float]:
        if text in rows:
            return rows[text]
        return default if default is not None else {EOS: 0.99}

    return script


def stable_json(result: Any) -> str:
    """A generation result without its timings and per-member counters, to compare two runs byte for byte."""
    d = result.to_dict()
    d["telemetry"] = {k: v for k, v in d["telemetry"].items() if k not in ("wall_seconds", "members")}
    return json.dumps(d, sort_keys=True)
