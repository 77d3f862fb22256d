from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The scripted fake lives beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    env = os.environ.get("ADAFUSE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if not d.is_dir():
        pytest.fail(f"benchmark data not found at {d}; set ADAFUSE_DATA")
    return d


@pytest.fixture(scope="session")
def zoo_members():
    """The three built-in models through llama.cpp, loaded once for the whole session."""
    from adafuse.backends import DEFAULT_ENSEMBLE, load_member

    members = [load_member(name, n_ctx=2048, n_threads=2) for name in DEFAULT_ENSEMBLE]
    yield members
    for m in members:
        m.close()


@pytest.fixture(scope="session")
def trivia_prompt(shared_data: Path) -> str:
    prompt = (shared_data / "triviaqa" / "prompt.txt").read_text().strip()
    return prompt + "\n\nQuestion: Which British king married Mary of Teck?\nAnswer:"
