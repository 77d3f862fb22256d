"""Members served by OpenAI-compatible engines over HTTP.

``client``: one engine's HTTP calls (retries, typed errors), its tokenizer and capability probes. ``member``:
``RemoteMember``, the member primitives (next tokens, scoring, greedy continuation) built on a client. ``text``:
``TextMember``, a hosted model that only writes text. Nothing is imported here, so a process that never talks to
an engine does not load httpx (10 MiB resident).
"""
