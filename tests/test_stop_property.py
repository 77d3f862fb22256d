"""Stop strings cut, never choose: for every method, the answer with stop string S is the answer without it, cut
before the first S (property test over random scripted members, prompts' continuations and stop strings)."""

from __future__ import annotations

import random
import zlib

import numpy as np
from fakes import EOS, ScriptedMember
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adafuse.config import METHODS, DecodeConfig
from adafuse.control.model import Choice, Controller
from adafuse.control.signals import pick_feature_names, route_feature_names
from adafuse.ensemble import Ensemble

PIECES = [" a", " b", " ab", "b", ".", "\n", " c", "a.", ", "]
STOPS = ["b", "\n", " a", ".", "ab", "a.", " c", "b b", ",", "zz"]


def random_member(name: str, seed: int) -> ScriptedMember:
    """Next-piece probabilities drawn afresh for every text, the same ones every time that text recurs."""

    def script(text: str) -> dict[str, float]:
        rng = random.Random(zlib.crc32(f"{seed}|{text}".encode()))
        chosen = rng.sample([*PIECES, EOS] if len(text) > 6 else PIECES, 4)
        raw = [rng.random() ** 2 for _ in chosen]
        return {p: 0.95 * w / sum(raw) for p, w in zip(chosen, raw, strict=True)}

    return ScriptedMember(name, PIECES, script, prompt="Q:")


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    method=st.sampled_from(METHODS),
    seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=3),
    stop=st.sampled_from(STOPS),
    theta=st.sampled_from([0.2, 0.5, 0.7, 0.95]),
    max_new_tokens=st.integers(1, 14),
    granularity=st.sampled_from(["word", "adaptive", "token"]),
)
def test_a_stop_string_only_cuts_the_answer(method, seeds, stop, theta, max_new_tokens, granularity):
    def answer(stops: tuple[str, ...]):
        members = [random_member(f"m{i}", seed) for i, seed in enumerate(seeds)]
        config = DecodeConfig(
            method=method, theta=theta, max_new_tokens=max_new_tokens, granularity=granularity, stop=stops
        )
        return Ensemble(members).generate("Q:", config)

    free, stopped = answer(()), answer((stop,))
    at = free.text.find(stop)
    assert stopped.text == (free.text if at < 0 else free.text[:at])
    assert (stopped.finish_reason == "stop") == (at >= 0)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seeds=st.lists(st.integers(0, 10_000), min_size=2, max_size=3),
    weights_seed=st.integers(0, 1000),
    route_at=st.sampled_from([0.0, 0.5, 2.0]),
    stop=st.sampled_from(STOPS),
    max_new_tokens=st.integers(1, 14),
)
def test_a_stop_string_only_cuts_the_controllers_answer(
    tmp_path_factory, seeds, weights_seed, route_at, stop, max_new_tokens
):
    names = [f"m{i}" for i in range(len(seeds))]
    rng = np.random.default_rng(weights_seed)

    def choice(features: list[str]) -> Choice:
        n = len(features)
        return Choice(features, [0.0] * n, [1.0] * n, rng.normal(size=n).tolist())

    ctl = Controller(
        [{"name": n, "fingerprint": None} for n in names],
        choice(route_feature_names(names)),
        choice(pick_feature_names(names)),
        route_at,
    )
    path = tmp_path_factory.mktemp("ctl") / "controller.json"
    ctl.save(path)

    def answer(stops: tuple[str, ...]):
        members = [random_member(n, seed) for n, seed in zip(names, seeds, strict=True)]
        config = DecodeConfig(controller=str(path), max_new_tokens=max_new_tokens, stop=stops)
        return Ensemble(members).generate("Q:", config)

    free, stopped = answer(()), answer((stop,))
    at = free.text.find(stop)
    assert stopped.text == (free.text if at < 0 else free.text[:at])
    assert (stopped.finish_reason == "stop") == (at >= 0)
