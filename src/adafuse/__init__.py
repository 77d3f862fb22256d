"""adafuse: adaptive ensemble decoding of LLMs with different tokenizers."""

import os

__version__ = "0.1.0"

# llama.cpp's and torch's CPU threads meet at a barrier after every operation; with OpenMP's default spin-waiting
# one descheduled thread stalls the others for a whole time slice, and decoding on a busy machine became 7x slower
# with 2 threads (268 ms/token vs 38 ms for Gemma on llama.cpp; 720 vs 90 ms for SmolLM2 on torch; measured).
# libgomp reads the policy once, when it loads, so it is set before any backend is imported; a user's own wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from adafuse.backends import load_member  # noqa: E402
from adafuse.config import DecodeConfig  # noqa: E402
from adafuse.ensemble import Ensemble  # noqa: E402
from adafuse.errors import AdafuseError  # noqa: E402
from adafuse.result import Result  # noqa: E402

__all__ = ["AdafuseError", "DecodeConfig", "Ensemble", "Result", "load_member"]
