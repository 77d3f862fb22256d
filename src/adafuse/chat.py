"""Rendering a conversation with each member's own chat template.

Templates come from the model file (GGUF ``tokenizer.chat_template`` or the HF tokenizer config) and are run in
a sandboxed Jinja2 environment, as transformers does. A model without a template (a base model such as Gemma 3
270M) gets a documented plain layout::

    System: <system text>

    User: <user text>

    Assistant: <assistant text>

    Assistant:
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from adafuse.errors import PromptError, require_text

Message = dict[str, str]
_ROLES = ("system", "user", "assistant")


def validate_messages(messages: Sequence[Any]) -> list[Message]:
    if not messages:
        raise PromptError("the conversation has no messages")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in _ROLES:
            raise PromptError(
                f"message {i} must be an object with role in {list(_ROLES)} and string content, got {m!r}"
            )
        out.append({"role": m["role"], "content": require_text(m["content"], f"message {i}'s content")})
    if not any(m["content"].strip() for m in out):
        raise PromptError("the conversation is empty (every message has empty content)")
    return out


def plain_layout(messages: Sequence[Message]) -> str:
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> Template:
    """Compile each member's template once, not on every request."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def render_chat(template: str | None, messages: Sequence[Message], bos: str = "", eos: str = "") -> str:
    """The prompt text a model expects for ``messages``, ending where the assistant's reply begins."""
    if not template:
        return plain_layout(messages)
    try:
        text = _compiled(template).render(
            messages=list(messages), add_generation_prompt=True, bos_token=bos, eos_token=eos
        )
    except TemplateError as exc:
        raise PromptError(f"the model's chat template rejected the conversation: {exc}") from None
    # The member's tokenizer adds BOS itself; a template that prints it too would double it.
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    return text
