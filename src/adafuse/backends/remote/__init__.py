"""Members served by OpenAI-compatible engines over HTTP.

``client``: one engine's HTTP calls (retries, typed errors), its tokenizer and capability probes. ``member``:
``RemoteMember``, the member primitives (next tokens, scoring, greedy continuation) built on a client.
"""

from __future__ import annotations

from adafuse.backends.remote.client import EOG_TEXTS, EngineClient
from adafuse.backends.remote.member import SELF_TEST_TEXT, RemoteMember

__all__ = ["EOG_TEXTS", "SELF_TEST_TEXT", "EngineClient", "RemoteMember"]
