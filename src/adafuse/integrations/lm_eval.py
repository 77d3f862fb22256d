"""lm-evaluation-harness model ``adafuse``: an ensemble of members with different tokenizers, seen as one LM.

lm-eval talks to a model in *text*: ``loglikelihood(context, continuation)``, ``loglikelihood_rolling(text)`` and
``generate_until(context, until, max_gen_toks)``. The members here do not share a tokenizer, so every quantity is
defined on strings and computed by each member in its own tokens:

``loglikelihood``
    ``LL(x | c) = sum_m w_m * LL_m(x | c)``: the weighted mean (weights normalised to sum to one; equal by
    default) of each member's log-probability of the continuation *text* ``x`` after the context *text* ``c``.
    ``LL_m`` is computed exactly as the decoder scores a candidate
    (:func:`adafuse.decoding.scoring.member_logprobs`), but summed rather than normalised: the tokens of
    ``tok_m(c + x)`` beyond the prefix they share with ``tok_m(c)``, minus the log-probability of the context's
    own re-tokenised tail when the tokenizer merges across the boundary (of the tail's *text*, through any token
    that starts with it: token healing), and log-added to the probability of
    ``x``'s own tokens appended to the unchanged context when that spelling differs. ``x`` is never tokenised on
    its own. A member whose tokenizer adds no BOS conditions an empty context on its end token, as lm-eval's
    Hugging Face model does.
``is_greedy`` (``greedy=`` model argument)
    * ``members`` (default): true when *every* member's own greedy decoding (argmax token by token in its own
      tokenizer, from its own tokenisation of ``c``) writes text that begins with ``x``, compared as UTF-8
      bytes. Cheap: a member stops as soon as its text leaves ``x``.
    * ``ensemble``: true when the ensemble's own decoding (the configured method, ``theta``, ...) from ``c``
      writes text that begins with ``x``. This is what "the model would generate ``x``" means for the
      ensemble (lambada's ``acc``), at the cost of one short generation per distinct context.
    * ``none``: always false, for tasks that ignore it (multiple choice) when every second counts.
``loglikelihood_rolling``
    The weighted mean of each member's log-probability of the whole text after its BOS token (its end token
    when it has no BOS), in lm-eval's disjoint rolling windows of the member's own context size.
``generate_until``
    :meth:`adafuse.Ensemble.generate` with ``until`` as stop strings (cut off) and ``max_gen_toks`` as the token
    budget (counted in the first member's tokenizer). Decoding is always greedy: sampling arguments are ignored
    with a warning.

With ``--apply_chat_template`` each member renders the conversation with its own chat template
(:func:`adafuse.chat.render_chat`): :meth:`AdafuseLM.apply_chat_template` hands lm-eval an opaque string that
carries the messages, and every request unpacks it per member.

Registration. Importing this module registers the class under ``adafuse`` (``@register_model``), so
``lm_eval.simple_evaluate(model="adafuse", ...)`` works after ``import adafuse.integrations.lm_eval``. The
package also declares an ``lm_eval.models`` entry point: the discovery group of lm-eval's plugin mechanism
(EleutherAI/lm-evaluation-harness PR #4013); lm-eval 0.4.13 has no entry-point discovery, so its own
``lm_eval`` command cannot find plugins, and ``adafuse-lm-eval`` (:func:`main`) is that command with the
installed ``lm_eval.models`` entry points registered first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import lm_eval.models  # noqa: F401 - lm-eval fills its registry only when it is empty; fill it before we add to it
from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry, register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from adafuse.backends import DEFAULT_ENSEMBLE
from adafuse.backends.base import Member, greedy
from adafuse.chat import Message, validate_messages
from adafuse.config import DecodeConfig, option_names, read_config
from adafuse.decoding.loop import OnRound
from adafuse.decoding.scoring import member_logprobs
from adafuse.decoding.state import MemberView
from adafuse.errors import ConfigError, PromptError
from adafuse.result import Candidate, Result

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from adafuse.ensemble import Ensemble

log = logging.getLogger(__name__)

MODEL_NAME = "adafuse"
ENTRY_POINT_GROUP = "lm_eval.models"
GREEDY_RULES = ("members", "ensemble", "none")
#: Model arguments whose value is a comma-separated list; a bare item after them continues the list.
_LIST_ARGS = ("models", "weights")
# lm-eval passes these to every model; an ensemble of CPU members has no use for them.
_IGNORED_ARGS = ("batch_size", "max_batch_size", "device")
# A context string that starts with this carries chat messages (see apply_chat_template). NUL cannot occur in
# a task's text, so no real prompt is mistaken for it.
_CHAT_MARK = "\x00adafuse-chat\x00"

T = TypeVar("T", bound="AdafuseLM")
MemberPrompt = tuple[str, bool]


@register_model(MODEL_NAME)
class AdafuseLM(LM):
    """The ensemble as an lm-eval model. Model arguments (``--model_args``): every decoding option of
    ``DecodeConfig`` but the per-request ones (``theta=0.5``, ``weights=[2,1,1]`` or ``auto``...), and
    ``models`` (comma-separated specs, default the built-ins; on the 0.4.13 command line write
    ``models=[a,b]`` or JSON, since its parser splits on every comma), ``n_ctx``, ``threads``, ``greedy``
    (members | ensemble | none), ``max_gen_toks`` (default budget when a task gives none). ``ensemble=`` (Python
    only) uses an already loaded :class:`~adafuse.Ensemble`, which the model then does not close.
    """

    def __init__(
        self,
        models: str | Sequence[str] | None = None,
        n_ctx: int | str = 4096,
        threads: int | str | None = None,
        greedy: str = "members",
        max_gen_toks: int | str = 256,
        ensemble: Ensemble | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        decoding = option_names(request=False)
        unknown = sorted(k for k in options if k not in (*decoding, *_IGNORED_ARGS))
        if unknown:
            own = ("models", "n_ctx", "threads", "greedy", "max_gen_toks")
            raise ConfigError(f"unknown adafuse model argument(s) {unknown}; known: {', '.join((*decoding, *own))}")
        if greedy not in GREEDY_RULES:
            raise ConfigError(f"greedy must be one of {', '.join(GREEDY_RULES)}, got {greedy!r}")
        self.greedy_rule = greedy
        self.max_gen_toks = _as_int("max_gen_toks", max_gen_toks, 1)
        chosen = {k: v for k, v in options.items() if k in decoding}
        if "weights" in chosen:
            chosen["weights"] = ",".join(_as_list(chosen["weights"])) or None
        self.config = read_config(
            {k: v if isinstance(v, str | type(None)) else str(v) for k, v in chosen.items()},
            where="adafuse model_args",
            request=False,
        )
        if ensemble is None:
            from adafuse.ensemble import Ensemble

            specs = _as_list(models) or list(DEFAULT_ENSEMBLE)
            # A wrong weight count is a typo: say so before loading anything.
            self.config.member_weights(len(specs))
            ensemble = Ensemble.from_specs(
                specs,
                n_ctx=_as_int("n_ctx", n_ctx, 16),
                n_threads=_as_int("threads", threads, 1) if threads not in (None, "") else None,
            )
            self._owns_ensemble = True
        else:
            if models is not None:
                raise ConfigError("give either models= or ensemble=, not both")
            self._owns_ensemble = False
        self.ensemble = ensemble
        self.weights = self.config.member_weights(len(ensemble.members))
        ensemble.controller(self.config)  # a controller fitted for other members: say so before any request
        self._warned_sampling = False

    # -- construction from lm-eval's argument strings ------------------------------------------------------------

    @classmethod
    def create_from_arg_string(cls: type[T], arg_string: str, additional_config: dict | None = None) -> T:
        """``models=a,b,c,theta=0.7``: a bare item continues the list of the key before it (lm-eval's own
        parser would make ``b`` and ``c`` keys of their own)."""
        args = parse_model_args(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    # -- lm-eval's three requests ----------------------------------------------------------------------------------

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [(str(req.args[0]), str(req.args[1])) for req in requests]
        results = self.loglikelihood_pairs(pairs, progress=not disable_tqdm)
        for pair, res in zip(pairs, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        texts = [str(req.args[0]) for req in requests]
        results = self.rolling_loglikelihoods(texts, progress=not disable_tqdm)
        for text, res in zip(texts, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), res)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        calls = [(str(req.args[0]), dict(req.args[1] or {})) for req in requests]
        outputs: list[str | None] = [None] * len(calls)
        # Identical requests (repeats) are decoded once: decoding is deterministic. Contexts in text order, so
        # contexts sharing a few-shot prefix are decoded one after another and each member's cache keeps it.
        by_key: dict[str, list[int]] = {}
        for i, (context, kwargs) in enumerate(calls):
            by_key.setdefault(json.dumps([context, kwargs], sort_keys=True, default=str), []).append(i)
        order = sorted(by_key.values(), key=lambda idxs: calls[idxs[0]][0])
        for idxs in tqdm(order, desc="adafuse generate_until", disable=disable_tqdm):
            context, kwargs = calls[idxs[0]]
            text = self.generate_text(context, kwargs)
            for i in idxs:
                outputs[i] = text
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
        return [o if o is not None else "" for o in outputs]

    # -- the same, on plain strings (also the Python API) -------------------------------------------------------

    def generate_text(self, context: str, gen_kwargs: dict[str, Any] | None = None) -> str:
        """One greedy generation with lm-eval's ``until`` (stop strings) and ``max_gen_toks``."""
        return self.generate_result(context, gen_kwargs).text

    def generate_result(self, context: str, gen_kwargs: dict[str, Any] | None = None) -> Result:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        if until is None:
            stops: tuple[str, ...] = ()
        elif isinstance(until, str):
            stops = (until,)
        elif isinstance(until, Iterable) and all(isinstance(s, str) for s in until):
            stops = tuple(until)
        else:
            raise ConfigError(f"`until` must be a string or a list of strings, got {until!r}")
        budget = _as_int("max_gen_toks", kwargs.pop("max_gen_toks", self.max_gen_toks), 1)
        self._warn_sampling(kwargs)
        cfg = replace(self.config, stop=stops, max_new_tokens=budget, stop_at_boxed=False)
        return self._generate(context, cfg)

    def loglikelihood_pairs(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[tuple[float, bool]]:
        """``(LL, is_greedy)`` for each ``(context, continuation)``, by the rules in the module docstring."""
        members = self.ensemble.members
        groups: dict[str, list[int]] = {}
        for i, (context, _) in enumerate(pairs):
            groups.setdefault(context, []).append(i)
        # Text order puts contexts that share a few-shot prefix next to each other: each member's prefix cache
        # then holds the shared part, and the continuations of one context are all scored against one cache.
        contexts = sorted(groups)
        lls = [[0.0] * len(pairs) for _ in members]
        greedy = [True] * len(pairs) if self.greedy_rule != "none" else [False] * len(pairs)
        bar = tqdm(total=len(contexts), desc="adafuse loglikelihood", disable=not progress)
        for context in contexts:
            idxs = groups[context]
            conts = [pairs[i][1] for i in idxs]
            prompts = self._member_prompts(context)
            for m, (member, prompt) in enumerate(zip(members, prompts, strict=True)):
                view = _view(member, prompt)
                for i, ll in zip(idxs, _member_loglikelihoods(view, conts), strict=True):
                    lls[m][i] = ll
                if self.greedy_rule == "members" and any(greedy[i] for i in idxs):
                    written = _member_greedy_bytes(member, view.ids(""), conts)
                    for i, cont in zip(idxs, conts, strict=True):
                        greedy[i] = greedy[i] and written.startswith(cont.encode("utf-8"))
            if self.greedy_rule == "ensemble":
                written = self._ensemble_greedy_bytes(context, conts)
                for i, cont in zip(idxs, conts, strict=True):
                    greedy[i] = written.startswith(cont.encode("utf-8"))
            bar.update(1)
        bar.close()
        return [(self._combine([lls[m][i] for m in range(len(members))]), greedy[i]) for i in range(len(pairs))]

    def rolling_loglikelihoods(self, texts: Sequence[str], progress: bool = False) -> list[float]:
        """The weighted mean of every member's log-probability of each whole text (rolling windows)."""
        out = []
        for text in tqdm(texts, desc="adafuse loglikelihood_rolling", disable=not progress):
            out.append(self._combine([_member_rolling(member, text) for member in self.ensemble.members]))
        return out

    # -- chat ------------------------------------------------------------------------------------------------------

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """An opaque string carrying the messages: each member renders them with its own template per request."""
        messages = validate_messages(chat_history)
        return _CHAT_MARK + json.dumps({"messages": messages, "generation_prompt": bool(add_generation_prompt)})

    @property
    def tokenizer_name(self) -> str:
        # lm-eval fingerprints its request cache with this: every member's tokenizer is involved.
        return "adafuse:" + "+".join(self.ensemble.names)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return "adafuse: each member's own chat template" if chat_template else ""

    def get_model_info(self) -> dict[str, Any]:
        return {"adafuse_models": self.ensemble.names, "adafuse_config": self.config.to_dict()}

    def close(self) -> None:
        """Close the members if this model loaded them."""
        if self._owns_ensemble:
            self.ensemble.close()

    # -- internals -------------------------------------------------------------------------------------------------

    def _combine(self, per_member: Sequence[float]) -> float:
        return math.fsum(w * ll for w, ll in zip(self.weights, per_member, strict=True))

    def _member_prompts(self, context: str) -> list[MemberPrompt]:
        """Each member's own prompt text for a request context, and whether it holds special tokens."""
        chat = _unpack_chat(context)
        if chat is None:
            return [(context, False) for _ in self.ensemble.members]
        messages, generation_prompt = chat
        if generation_prompt:
            return self.ensemble.prompts(messages, chat=True)
        # A prefilled assistant turn (lm-eval's gen_prefix): the earlier turns rendered with the generation
        # prompt, then the assistant's text so far, which the model continues.
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise PromptError("a chat context without a generation prompt must end with an assistant message")
        rendered = self.ensemble.prompts(messages[:-1], chat=True)
        return [(text + messages[-1]["content"], special) for text, special in rendered]

    def _generate(self, context: str, cfg: DecodeConfig, on_round: OnRound | None = None) -> Result:
        chat = _unpack_chat(context)
        if chat is None:
            return self.ensemble.generate(context, cfg, on_round=on_round)
        messages, generation_prompt = chat
        if generation_prompt:
            return self.ensemble.generate(messages, cfg, chat=True, on_round=on_round)
        return self._generate_from_prompts(self._member_prompts(context), cfg, on_round)

    def _generate_from_prompts(
        self, prompts: list[MemberPrompt], cfg: DecodeConfig, on_round: OnRound | None
    ) -> Result:
        # Ensemble.generate takes one prompt (or messages rendered with a generation prompt); a prefilled
        # assistant turn needs per-member prompt texts, so this runs the same loop on them directly.
        from adafuse.decoding.loop import run
        from adafuse.decoding.state import DecodeState
        from adafuse.ensemble import STRATEGIES

        ens = self.ensemble
        views = [MemberView(m, text, special) for m, (text, special) in zip(ens.members, prompts, strict=True)]
        active = list(range(len(views)))
        if cfg.method == "single":
            active = [cfg.single_member or 0]
        state = DecodeState(views, cfg, cfg.member_weights(len(views)), active=active)
        with ens._lock:
            return run(state, STRATEGIES[cfg.method], cfg.method, on_round)

    def _ensemble_greedy_bytes(self, context: str, conts: Sequence[str]) -> bytes:
        """What the ensemble writes from ``context``, decoded only as far as some continuation still matches."""
        targets = [c.encode("utf-8") for c in conts]
        longest = max((len(t) for t in targets), default=0)
        if longest == 0:
            return b""
        written = [b""]

        def on_round(_rnd: object, committed: str) -> None:
            written[0] = committed.encode("utf-8")
            if not _still_matching(written[0], targets):
                raise _Enough

        # Every token spells at least one byte, so a budget of `longest` tokens (in the first member's
        # tokenizer) always reaches past the longest continuation.
        cfg = replace(self.config, stop=(), stop_at_boxed=False, max_new_tokens=longest + 1)
        # _Enough ends the generation early; `written` then holds what was committed until then.
        with contextlib.suppress(_Enough):
            written[0] = self._generate(context, cfg, on_round).text.encode("utf-8")
        return written[0]

    def _warn_sampling(self, kwargs: dict[str, Any]) -> None:
        sampling = bool(kwargs.get("do_sample")) or float(kwargs.get("temperature") or 0.0) > 0.0
        if sampling and not self._warned_sampling:
            log.warning("adafuse decodes greedily; sampling arguments %s are ignored", kwargs)
            self._warned_sampling = True


class _Enough(Exception):
    """Raised from ``on_round`` to end a generation once it has answered the question asked of it."""


# ------------------------------------------------------------------------------------------ per-member scoring


class _PrefixedView(MemberView):
    """A member view whose every tokenisation starts with fixed ids: the end token standing in for the BOS a
    member without one lacks, so that an empty context still has something to condition on."""

    def __init__(self, member: Member, prompt: str, special: bool, prefix: Sequence[int]) -> None:
        super().__init__(member, prompt, special)
        self.prefix = list(prefix)

    def ids(self, continuation: str) -> list[int]:
        return self.prefix + super().ids(continuation)


def _view(member: Member, prompt: MemberPrompt) -> MemberView:
    text, special = prompt
    view = MemberView(member, text, special)
    if not view.ids(""):
        return _PrefixedView(member, text, special, [member.eos_id])
    return view


def _member_loglikelihoods(view: MemberView, conts: Sequence[str]) -> list[float]:
    """One member's log-probability of each continuation after the view's prompt (the decoder's scoring plan,
    summed instead of normalised). All of one context's requests go to the member in one ``score`` call."""
    member = view.member
    ctx = view.ids("")
    for cont in conts:
        n = len(view.ids(cont))
        if n > member.n_ctx:
            raise PromptError(
                f"member {member.name!r}: context and continuation are {n} tokens, over its window of "
                f"{member.n_ctx} (raise n_ctx)"
            )
    # As at the start of a generation: the context is evaluated the same way whatever was scored before, so a
    # request's numbers do not depend on its neighbours in the run.
    member.prefill(ctx)
    return [lp for lp, _ in member_logprobs(view, ctx, "", [Candidate(text=cont) for cont in conts])]


def _still_matching(written: bytes, targets: Sequence[bytes]) -> bool:
    """True while some target is longer than ``written`` and starts with it: decoding on could still decide."""
    return any(len(t) > len(written) and t.startswith(written) for t in targets)


def _member_greedy_bytes(member: Member, ctx: Sequence[int], conts: Sequence[str]) -> bytes:
    """The bytes a member's greedy decoding writes after ``ctx``, only as far as some continuation matches."""
    targets = [c.encode("utf-8") for c in conts]
    longest = max((len(t) for t in targets), default=0)
    if longest == 0:
        return b""

    def until(tokens: list[int]) -> bool:
        return not _still_matching(b"".join(member.token_bytes(t) for t in tokens), targets)

    # At most one token per byte of the longest target (plus one for a token that spells nothing).
    budget = min(longest + 1, max(0, member.n_ctx - len(ctx)))
    steps = greedy(member, ctx, budget, 1, until)
    return b"".join(member.token_bytes(s.token) for s in steps if not member.is_eog(s.token))


def _member_rolling(member: Member, text: str) -> float:
    """A member's log-probability of the whole ``text`` after its BOS (or end) token, in lm-eval's rolling
    windows of the member's context size; every token is predicted exactly once."""
    if not text:
        return 0.0
    body = member.tokenize(text, bos=False)
    with_bos = member.tokenize(text, bos=True)
    prefix = with_bos[0] if len(with_bos) == len(body) + 1 and with_bos[1:] == body else member.eos_id
    windows = [
        make_disjoint_window(w)
        for w in get_rolling_token_windows(
            token_list=body, prefix_token=prefix, max_seq_len=member.n_ctx, context_len=1
        )
    ]
    scored = []
    for ctx, pred in windows:
        member.prefill(list(ctx))  # each window reads like a prompt of its own, whatever was scored before
        scored.extend(member.score([(list(ctx), list(pred))]))
    return math.fsum(lp for window in scored for lp in window)


# ----------------------------------------------------------------------------------------------- chat strings


def _unpack_chat(context: str) -> tuple[list[Message], bool] | None:
    if not context.startswith(_CHAT_MARK):
        return None
    data = json.loads(context[len(_CHAT_MARK) :])
    return validate_messages(data["messages"]), bool(data["generation_prompt"])


# ------------------------------------------------------------------------------------------ argument parsing


def parse_model_args(arg_string: str) -> dict[str, Any]:
    """``key=value`` pairs separated by commas (outside quotes and brackets); a bare item after ``models=`` or
    ``weights=`` continues that list, so ``models=a,b,c,theta=0.7`` reads as lm-eval users write it."""
    args: dict[str, Any] = {}
    last: str | None = None
    for item in _split_top_level(arg_string or ""):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            if last in _LIST_ARGS:
                args[last] = f"{args[last]},{item}"
                continue
            raise ConfigError(f"model argument {item!r} is not key=value")
        key = key.strip()
        args[key] = _unquote(value.strip())
        last = key
    return args


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    depth = 0
    quote: str | None = None
    for ch in text:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _as_list(value: object) -> list[str]:
    """A list argument: a list, or a string ``a,b``, ``[a,b]`` or ``['a', 'b']``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [_unquote(part.strip()) for part in text.split(",") if part.strip()]
    if isinstance(value, Iterable):
        return [str(v).strip() for v in value]
    return [str(value)]


def _as_int(name: str, value: object, low: int) -> int:
    try:
        number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}") from None
    if number < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return number


# ------------------------------------------------------------------------------------- discovery and the CLI


def register_entry_points() -> list[str]:
    """Register every installed ``lm_eval.models`` entry point that lm-eval does not know yet, lazily (the
    plugin's module is imported only when its model is asked for); returns the names added.

    Newer lm-eval does this itself; 0.4.13 does not, which is what :func:`main` makes up for.
    """
    from importlib.metadata import entry_points

    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in model_registry:
            continue
        model_registry.register(ep.name, target=f"{ep.module}:{ep.attr}")
        added.append(ep.name)
    return added


def main(argv: Sequence[str] | None = None) -> None:
    """``adafuse-lm-eval``: lm-eval's own command line (same arguments, same output) with the installed
    ``lm_eval.models`` entry points, ``adafuse`` among them, registered first."""
    from lm_eval.__main__ import cli_evaluate

    register_entry_points()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
