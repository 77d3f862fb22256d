"""The decoder's outputs, pinned: every method on hand-made prompts of all six task layouts, compared as JSON
(without timings) against results recorded from the three built-in models.

Record again only for an intended change of outputs: ``ADAFUSE_RECORD_GOLDEN=1 pytest tests/test_golden.py``.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from adafuse.config import DecodeConfig

pytestmark = [pytest.mark.models, pytest.mark.slow]

HERE = Path(__file__).parent / "data" / "golden"
PROMPTS = json.loads((HERE / "prompts.json").read_text(encoding="utf-8"))
RESULTS = HERE / "results.json.gz"
#: method label -> options; the default decoder, its fusing settings and each baseline.
METHODS: dict[str, dict[str, Any]] = {
    "adafuse": {},
    "adafuse@weights=equal": {"weights": "equal"},
    "adafuse@granularity=adaptive": {"granularity": "adaptive", "weights": "equal"},
    "token": {"method": "token"},
    "span": {"method": "span"},
    "sample": {"method": "sample"},
    "single": {"method": "single", "single_member": 1},
}
#: the slowest cases run on one prompt of each layout (the token baseline scores every top-k string each token).
SHORT = {"token", "span", "sample", "adafuse@granularity=adaptive"}
#: options and telemetry fields the recorded results carry that the decoder no longer has, with the one value
#: each can take now: a recorded result is compared without them once they are gone, and only if it had that value.
RETIRED: dict[str, dict[str, Any]] = {
    "config": {
        "combiner": "mean",
        "normalise": "token",
        "solo_branching": False,
        "drop_unfinished": False,
        "auto_evidence": "instructions",
        "token_healing": True,
        "word_token_cap": 12,
        "granularity_policy": {
            "lead_words": 2,
            "max_entropy": 1.5,
            "lost_margin": 0.1,
            "sentence_after": 1,
            "paragraph_after": 3,
            "sentence_words": 32,
            "paragraph_words": 96,
            "maths_words": 1,
        },
    },
    "telemetry": {"normalise": "token"},
}


def _case(item: dict[str, Any], label: str) -> tuple[Any, DecodeConfig, bool]:
    prompt = item.get("prompt") or item["messages"]
    config = DecodeConfig(
        max_new_tokens=item["max_new_tokens"],
        stop=tuple(item.get("stop", ())),
        stop_at_boxed=item.get("boxed", False),
        **METHODS[label],
    )
    return prompt, config, "messages" in item


def _stable(d: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(d))
    d["telemetry"].pop("wall_seconds", None)
    return d


def _without_retired(recorded: dict[str, Any], now: dict[str, Any], where: str) -> dict[str, Any]:
    recorded = json.loads(json.dumps(recorded))
    for section, fields in RETIRED.items():
        for key, value in fields.items():
            if key in now[section] or key not in recorded[section]:
                continue
            assert recorded[section][key] == value, f"{where}: recorded {section}.{key}={recorded[section][key]!r}"
            del recorded[section][key]
    return recorded


@pytest.fixture(scope="module")
def ensemble():
    from adafuse.backends import DEFAULT_ENSEMBLE
    from adafuse.ensemble import Ensemble

    # Members of its own: their caches start empty, so the per-member counters are pinned too. The default
    # allocation (cores shared out per call): no number depends on it, and it is the faster one.
    with Ensemble.from_specs(list(DEFAULT_ENSEMBLE), n_ctx=2048) as ens:
        yield ens


def _run_all(ensemble) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label in METHODS:
        for n, item in enumerate(PROMPTS):
            if label in SHORT and n % 2:
                continue
            prompt, config, chat = _case(item, label)
            out[f"{label} #{n} {item['task']}"] = _stable(ensemble.generate(prompt, config, chat=chat).to_dict())
    return out


def test_outputs_match_the_recorded_ones(ensemble):
    results = _run_all(ensemble)
    if os.environ.get("ADAFUSE_RECORD_GOLDEN"):
        data = json.dumps(results, indent=0, sort_keys=True, ensure_ascii=False).encode("utf-8")
        RESULTS.write_bytes(gzip.compress(data, mtime=0))
        pytest.skip("recorded")
    recorded = json.loads(gzip.decompress(RESULTS.read_bytes()))
    assert sorted(recorded) == sorted(results)
    for where, now in results.items():
        want = _without_retired(recorded[where], now, where)
        assert now["text"] == want["text"], where
        assert now == want, where
