"""adafuse: adaptive ensemble decoding of LLMs with different tokenizers."""

from adafuse.backends import load_member
from adafuse.config import DecodeConfig
from adafuse.ensemble import Ensemble
from adafuse.errors import AdafuseError
from adafuse.result import Result

__all__ = ["AdafuseError", "DecodeConfig", "Ensemble", "Result", "load_member"]
__version__ = "0.1.0"
