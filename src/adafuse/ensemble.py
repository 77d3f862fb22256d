"""The ensemble: owns its members, builds each member's own prompt, and runs a decoding strategy."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from adafuse.backends import DEFAULT_ENSEMBLE, Member, load_member
from adafuse.backends.remote.text import TextMember
from adafuse.chat import Message, render_chat, validate_messages
from adafuse.config import DecodeConfig
from adafuse.control.model import Controller, load_controller
from adafuse.decoding.adafuse import adafuse_round
from adafuse.decoding.baselines import sample_round, single_round, span_round, token_round
from adafuse.decoding.controlled import controlled_round
from adafuse.decoding.failure import FailurePolicy, check_policy
from adafuse.decoding.guard import Budget, Guard
from adafuse.decoding.loop import OnRound, Strategy, run
from adafuse.decoding.state import DecodeState, MemberView
from adafuse.decoding.text_proposals import TextProposer
from adafuse.errors import ConfigError, ModelNotFoundError, PromptError, require_text
from adafuse.result import Result

STRATEGIES: dict[str, Strategy] = {
    "adafuse": adafuse_round,
    "single": single_round,
    "token": token_round,
    "span": span_round,
    "sample": sample_round,
}


class Ensemble:
    """Several members writing one answer. Thread-safe: concurrent calls to ``generate`` run one at a time."""

    def __init__(self, members: Sequence[Member | TextMember], on_member_failure: str = "fail") -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError(f"member names must be unique, got {names}")
        #: the members that score and vote (the judges of text-only members' candidates).
        self.members: list[Member] = [m for m in members if not isinstance(m, TextMember)]
        #: text-only members (``text+http://``): they propose and never vote.
        self.text_members = [m for m in members if isinstance(m, TextMember)]
        if not self.members:
            raise ConfigError(
                f"text-only members ({', '.join(names)}) need at least one member that can score their candidates "
                "(a local model, hf:DIR or a scoring http:// member) to judge them"
            )
        #: "fail" or "drop": what a generation does when a member fails mid-way (see decoding.failure).
        self.on_member_failure = check_policy(on_member_failure)
        self._lock = threading.Lock()

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[str] | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        on_member_failure: str = "fail",
    ) -> Ensemble:
        """Load members from specs (built-in names, ``.gguf`` paths, ``hf:DIR``, ``http://HOST:PORT/v1``)."""
        specs = list(specs) if specs else list(DEFAULT_ENSEMBLE)
        check_policy(on_member_failure)  # before loading anything
        if any(not s.strip() for s in specs):
            raise ModelNotFoundError("empty model name in the model list")
        loaded: list[Member | TextMember] = []
        try:
            for spec in specs:
                loaded.append(load_member(spec, n_ctx=n_ctx, n_threads=n_threads))
        except BaseException:
            for m in loaded:
                m.close()
            raise
        return cls(loaded, on_member_failure)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member_index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"no member named {name!r}; members are {self.names}") from None

    def controller(self, config: DecodeConfig) -> Controller | None:
        """The controller ``config`` names, checked against these members (ConfigError naming the difference)."""
        if config.controller is None:
            return None
        controller = load_controller(config.controller)
        controller.check_members(self.members, self.names)
        return controller

    def prompts(self, prompt: str | Sequence[Message], chat: bool) -> list[tuple[str, bool]]:
        """Each member's prompt text and whether it holds special tokens to parse."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty")
            require_text(prompt, "the prompt")
            if not chat:
                return [(prompt, False) for _ in self.members]
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = validate_messages(prompt)
        rendered = []
        for m in self.members:
            text = render_chat(m.chat_template, messages, m.special_text("bos"), m.special_text("eos"))
            rendered.append((text, bool(m.chat_template)))
        return rendered

    def generate(
        self,
        prompt: str | Sequence[Message],
        config: DecodeConfig | None = None,
        *,
        chat: bool = False,
        on_round: OnRound | None = None,
        cancel: threading.Event | None = None,
        budget: Budget | None = None,
        **overrides: Any,
    ) -> Result:
        """Decode one answer. ``prompt`` is raw text, or a list of chat messages (rendered per member).

        ``cancel``: once set, the generation raises ``Cancelled`` within one model call. ``budget``: the answer
        ends (finish reason ``budget``) with what was committed when it runs out."""
        cfg = config or DecodeConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        weights = cfg.member_weights(len(self.members))
        prompts = self.prompts(prompt, chat)
        views = [MemberView(m, text, special) for m, (text, special) in zip(self.members, prompts, strict=True)]
        active = list(range(len(self.members)))
        if cfg.method == "single":
            active = [cfg.single_member if cfg.single_member is not None else 0]
            if not 0 <= active[0] < len(self.members):
                raise ConfigError(f"single_member {active[0]} is not a member index (0..{len(self.members) - 1})")
        controller = self.controller(cfg)
        if self.text_members and (cfg.method != "adafuse" or controller is not None):
            raise ConfigError(
                f"text-only members ({', '.join(m.name for m in self.text_members)}) take part in adafuse rounds "
                f"only, not in method {cfg.method!r}{' with a controller' if controller is not None else ''}"
            )
        strategy = controlled_round if controller is not None else STRATEGIES[cfg.method]
        # A chat request reaches a text-only member as messages (its endpoint applies its own template).
        asked = [{"role": "user", "content": prompt}] if chat and isinstance(prompt, str) else prompt
        texts = [TextProposer(m, asked, self.on_member_failure) for m in self.text_members]
        with self._lock:
            policy = FailurePolicy(strategy, self.on_member_failure)
            active = policy.admit(views, active)  # a member already down is dropped (or fails) here
            for i in active:
                _check_fits(views[i], cfg)
            guard = Guard(self.members, cancel, budget or Budget())
            state = DecodeState(views, cfg, weights, active=active, guard=guard, controller=controller, texts=texts)
            result = run(state, policy, cfg.method, on_round)
            result.telemetry.dropped.update(policy.dropped)
            return result

    def close(self) -> None:
        for m in [*self.members, *self.text_members]:
            m.close()

    def __enter__(self) -> Ensemble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_fits(view: MemberView, cfg: DecodeConfig) -> None:
    n = len(view.ids(""))
    window = view.member.n_ctx
    if n + cfg.max_new_tokens > window:
        raise PromptError(
            f"the prompt is {n} tokens for member {view.name!r}; with max_new_tokens={cfg.max_new_tokens} it needs "
            f"{n + cfg.max_new_tokens} but the context window is {window} (shorten the prompt, lower "
            "max_new_tokens, or raise --n-ctx)"
        )
