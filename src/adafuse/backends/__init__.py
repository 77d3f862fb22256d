"""Model backends: one protocol (``base.Member``), one module per engine, and spec -> member loading."""

from __future__ import annotations

from adafuse.backends.base import Member, MemberStats, Step, TopK
from adafuse.backends.zoo import DEFAULT_ENSEMBLE, ZOO, resolve_model_path

__all__ = ["DEFAULT_ENSEMBLE", "ZOO", "Member", "MemberStats", "Step", "TopK", "load_member"]


def load_member(spec: str, n_ctx: int = 4096, n_threads: int | None = None) -> Member:
    """A member from a spec: a built-in name, a ``.gguf`` path (llama.cpp), ``hf:DIR`` or ``http(s)://...``."""
    spec = spec.strip()
    if spec.startswith("hf:"):
        from adafuse.backends.hf import HFMember

        return HFMember(spec[3:], n_ctx=n_ctx, n_threads=n_threads)
    if spec.startswith(("http://", "https://")):
        from adafuse.backends.remote import RemoteMember

        return RemoteMember(spec, n_ctx=n_ctx)
    from adafuse.backends.llamacpp import LlamaCppMember

    path = resolve_model_path(spec)
    name = spec if spec in ZOO else path.stem
    return LlamaCppMember(path, name=name, n_ctx=n_ctx, n_threads=n_threads)
