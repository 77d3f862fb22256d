from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The scripted fake lives beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]

# Hand-made rows and prompts in each benchmark's format, laid out like the benchmark data folder, so that the
# tests run on a clean clone. The real dev splits are only read by the tests that take ``shared_data``.
FIXTURES = Path(__file__).parent / "data"


def data_dir() -> Path | None:
    """The real benchmark data folder named by $ADAFUSE_DATA, or None when it is unset."""
    env = os.environ.get("ADAFUSE_DATA")
    return Path(env) if env else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real dev splits; a test that needs them is skipped, saying why, when they are not there."""
    d = data_dir()
    if d is None:
        pytest.skip("needs the benchmark dev splits: ADAFUSE_DATA is not set")
    if not d.is_dir():
        pytest.skip(f"needs the benchmark dev splits: ADAFUSE_DATA={d} is not a directory")
    return d


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """The hand-made benchmark folder under tests/data."""
    return FIXTURES


@pytest.fixture(scope="session", params=["fixtures", "dev"])
def benchmark_dir(request: pytest.FixtureRequest) -> Path:
    """Each benchmark folder in turn: the hand-made one, then the real dev splits (skipped when absent)."""
    return FIXTURES if request.param == "fixtures" else request.getfixturevalue("shared_data")


@pytest.fixture(scope="session")
def zoo_members():
    """The three built-in models through llama.cpp, loaded once for the whole session."""
    from adafuse.backends import DEFAULT_ENSEMBLE, load_member

    members = [load_member(name, n_ctx=2048, n_threads=2) for name in DEFAULT_ENSEMBLE]
    yield members
    for m in members:
        m.close()


@pytest.fixture(scope="session")
def trivia_prompt(fixture_data: Path) -> str:
    prompt = (fixture_data / "triviaqa" / "prompt.txt").read_text().strip()
    return prompt + "\n\nQuestion: What is the capital city of France?\nAnswer:"
