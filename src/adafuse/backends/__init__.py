"""Model backends: one protocol (``base.Member``), one module per engine, and spec -> member loading."""

from __future__ import annotations

from adafuse.backends.base import Member, MemberStats, Step, TopK
from adafuse.backends.zoo import DEFAULT_ENSEMBLE, ZOO, resolve_model_path

__all__ = ["DEFAULT_ENSEMBLE", "ZOO", "Member", "MemberStats", "Step", "TopK", "load_member"]


def load_member(spec: str, n_ctx: int = 4096, n_threads: int | None = None) -> Member:
    """A member from a spec: a built-in name, a ``.gguf`` path (llama.cpp), ``hf:DIR``, ``http(s)://...``
    or a text-only ``text+http(s)://...`` (``backends.remote.text``)."""
    spec = spec.strip()
    if spec.startswith("hf:"):
        from adafuse.backends.hf import HFMember

        # hf:DIR?device=cuda&dtype=bfloat16 - device and dtype ride on the spec, so every caller can set them.
        target, _, query = spec[3:].partition("?")
        opts = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        unknown = set(opts) - {"device", "dtype"}
        if unknown:
            from adafuse.errors import ConfigError

            raise ConfigError(f"unknown option(s) {sorted(unknown)} in {spec!r}; hf: specs take device and dtype")
        return HFMember(target, n_ctx=n_ctx, n_threads=n_threads, **opts)
    if spec.startswith(("text+http://", "text+https://")):
        from adafuse.backends.remote.text import TextMember

        return TextMember(spec)  # type: ignore[return-value]  # kept apart by Ensemble: it proposes, never scores
    if spec.startswith(("http://", "https://")):
        from adafuse.backends.remote.member import RemoteMember

        return RemoteMember(spec, n_ctx=n_ctx)
    from adafuse.backends.llamacpp import LlamaCppMember

    path = resolve_model_path(spec)
    name = spec if spec in ZOO else path.stem
    return LlamaCppMember(path, name=name, n_ctx=n_ctx, n_threads=n_threads)
