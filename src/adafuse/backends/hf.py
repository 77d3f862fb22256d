"""Hugging Face transformers member: any local model directory, or a GGUF file dequantised by transformers.

The member keeps one batch-1 KV cache (a ``DynamicCache``) and the token ids it holds. A call whose context shares
a prefix with the cache crops it to that prefix and runs only the new tokens, so the prompt is encoded once per
generation; ``prefill`` cuts prompts at fixed 64-token boundaries so that an answer never depends on what ran
before. ``score`` runs all candidates of a round in one right-padded batch on top of their shared prefix: the
prefix's keys and values are copied into a batch cache, so the member's own cache (usually holding its own
proposal) is not disturbed. ``next_tokens`` walks an uncertain member's branches the same way, in lockstep: one
batched forward per step for all of them. Both batches are kept (the scoring batch runs each candidate to its last
token): when the round's winner is one of their rows, the next round adopts that row instead of evaluating the
committed span again. Logits are computed only at the positions a caller reads
(``logits_to_keep``): with a 49k-262k vocabulary the output projection is most of the cost of a short suffix.

GGUF files go through transformers' GGUF loader, which dequantises to dense float32 weights; that takes tens of
seconds, so the dequantised model and tokenizer are saved once under ``cache_dir() / "hf"`` and loaded from there
afterwards. Nothing here ever touches the network (``local_files_only=True`` everywhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adafuse.backends.base import MemberStats, TopK, available_cores, common_prefix_len, file_fingerprint
from adafuse.backends.prefix_cache import CHUNK, PrefixCachedMember, Row, chunks
from adafuse.backends.zoo import ZOO, cache_dir, zoo_path
from adafuse.errors import ConfigError, MemberError, ModelLoadError, ModelNotFoundError, PromptError

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
except ImportError:  # pragma: no cover - exercised only without the extra
    torch = None  # type: ignore[assignment]
    transformers = None  # type: ignore[assignment]

HF_EXTRA = "pip install 'adafuse[hf]'"
# Forwards are cut at multiples of ``CHUNK`` positions (``prefix_cache``): CPU matrix kernels sum in an order that
# depends on how many rows they get (MKL: 1, 2-15 and 16+ rows give different last bits, measured). The cut also
# bounds the attention scores of one forward (chunk x context).
# ``evidence`` of whole chunks remembered per member, by the prompt prefix they end at.
_CHUNK_EVIDENCE_KEPT = 4096
# The batched scoring cache holds the shared prefix once per candidate; past this size the batch is split.
_BATCH_CACHE_BYTES = 1 << 30
# Bumped when the layout of the dequantised-GGUF cache changes, so an old cache is never read as a new one.
_GGUF_CACHE_VERSION = "v3"
# What the GGUF file says that a transformers checkpoint cannot hold (``_gguf_vocab``), saved beside the
# dequantised weights.
_GGUF_META = "adafuse-gguf.json"

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}

# Special tokens that end a turn, by text, as llama.cpp's vocabulary loader marks them end-of-generation (its FIM
# pad/repo/file-separator tokens included), so both backends stop on the same tokens of the same model.
_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<|fim_pad|>",
        "<fim-pad>",
        "<fim_pad>",
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
        "<|file_sep|>",
        "</s>",
    }
)
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _require_torch() -> None:
    if torch is None or transformers is None:
        raise ModelLoadError(f"the transformers backend needs torch and transformers; run: {HF_EXTRA}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, used by every byte-level BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _json_types(node: Any) -> Iterator[str]:
    """Every ``"type"`` value in a tokenizer.json component (decoders and pre-tokenizers nest in Sequences)."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for value in node.values():
            yield from _json_types(value)
    elif isinstance(node, list):
        for value in node:
            yield from _json_types(value)


# -- locating and loading -----------------------------------------------------------------------------------------


def _looks_like_hub_id(spec: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec)) and not spec.endswith(".gguf")


def _resolve(path_or_id: str | Path, gguf_file: str | None) -> tuple[str, str | None, str]:
    """(directory or hub id, GGUF file name or None, default member name) for a spec, or a one-line error."""
    spec = str(path_or_id).strip()
    if not spec:
        raise ModelNotFoundError("empty transformers model spec; give hf:DIR, hf:FILE.gguf or hf:<built-in name>")
    if gguf_file is None and spec in ZOO:
        path = zoo_path(spec)
        return str(path.parent), path.name, f"hf:{spec}"
    path = Path(spec).expanduser()
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path / gguf_file}")
        return str(path), gguf_file, Path(gguf_file).stem
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(f"{path} is a file but not a .gguf file; give a model directory or a .gguf file")
        return str(path.parent), path.name, path.stem
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a transformers model directory (no config.json in it)")
        return str(path), None, path.name
    if path.suffix.lower() == ".gguf" or path.is_absolute() or spec.startswith(".") or not _looks_like_hub_id(spec):
        raise ModelNotFoundError(
            f"transformers model not found: {spec} (not a directory, a .gguf file or a built-in name: {', '.join(ZOO)})"
        )
    # An "org/name" id: only a copy already in the local Hugging Face cache can be used.
    return spec, None, spec.rsplit("/", 1)[-1]


def _check_gguf(path: Path) -> None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def _gguf_key(path: Path) -> str:
    """Cache key of a GGUF file: its size and the hash of its first and last 4 MiB (cheap, content-based)."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{_GGUF_CACHE_VERSION}:{size}:".encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 22))
        if size > 1 << 23:
            f.seek(size - (1 << 22))
        digest.update(f.read(1 << 22))
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def _dtype_kwarg() -> str:
    # transformers 4.56 renamed from_pretrained's ``torch_dtype`` to ``dtype``.
    version = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if version >= (4, 56) else "torch_dtype"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' weight-loading bars and advice on stderr, off unless ADAFUSE_HF_VERBOSE is set.

    Errors still raise. The one-time GGUF conversion keeps its own bar (plain tqdm, not switchable here).
    """
    if os.environ.get("ADAFUSE_HF_VERBOSE"):
        yield
        return
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _from_pretrained(source: str, gguf_file: str | None, dtype: Any) -> tuple[Any, Any]:
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    with _quiet():
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **{_dtype_kwarg(): dtype})
    return model, tokenizer


def _load_gguf(directory: str, gguf_file: str, cache_root: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Dequantised float32 model, tokenizer and vocabulary facts (``_gguf_vocab``) of a GGUF file, cached on disk."""
    path = Path(directory) / gguf_file
    _check_gguf(path)
    target = cache_root / "hf" / _gguf_key(path)
    if (target / "config.json").is_file():
        try:
            model, tokenizer = _from_pretrained(str(target), None, torch.float32)
            return model, tokenizer, json.loads((target / _GGUF_META).read_text())
        except Exception:
            # A damaged cache entry is rebuilt rather than reported: the GGUF file itself is fine.
            shutil.rmtree(target, ignore_errors=True)
    try:
        model, tokenizer = _from_pretrained(directory, gguf_file, torch.float32)
    except ValueError as exc:
        # transformers raises ValueError for GGUF architectures its loader does not map.
        raise ModelLoadError(f"transformers cannot load {path}: {_first_line(exc)}") from exc
    meta = _gguf_vocab(path)
    _save_dequantised(model, tokenizer, meta, target)
    return model, tokenizer, meta


def _gguf_vocab(path: Path) -> dict[str, Any]:
    """What the GGUF vocabulary says that transformers' converted tokenizer may lose, as llama.cpp reads it.

    ``control_ids``: tokens typed control or unused (padding rows such as Qwen's "[PAD151665]"), which llama.cpp
    prints as nothing. ``add_bos``: whether a BOS starts every text, and ``bos_id`` ... ``eom_id``: the special
    tokens (transformers 4.57 converts SmolLM2's tokenizer with a BOS its GGUF turns off, and with EOS = BOS;
    5.x gets both right). Reading the file means parsing the whole vocabulary (seconds for 150k tokens), so it is
    done once, on conversion.
    """
    meta: dict[str, Any] = {"gguf": str(path), "control_ids": [], "add_bos": None}
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
    except Exception:
        return meta

    def scalar(key: str) -> Any:
        field = fields.get(key)
        return field.parts[field.data[0]].tolist()[0] if field is not None and field.data else None

    types_field = fields.get("tokenizer.ggml.token_type")
    if types_field is not None and types_field.data:
        types = np.concatenate([types_field.parts[i] for i in types_field.data])
        # llama.cpp token types: 3 = control, 5 = unused.
        meta["control_ids"] = [int(i) for i in np.flatnonzero((types == 3) | (types == 5))]
    add_bos = scalar("tokenizer.ggml.add_bos_token")
    meta["add_bos"] = None if add_bos is None else bool(add_bos)
    for key in ("bos", "eos", "eot", "eom"):
        value = scalar(f"tokenizer.ggml.{key}_token_id")
        meta[f"{key}_id"] = None if value is None else int(value)
    return meta


def _save_dequantised(model: Any, tokenizer: Any, meta: dict[str, Any], target: Path) -> None:
    # The weights are plain tensors by now; the GGUF quantizer still attached to the model only blocks
    # save_pretrained ("not serializable") and would make the saved config claim a GGUF quantisation.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with _quiet():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / _GGUF_META).write_text(json.dumps(meta))
        # A complete directory appears under its final name at once, so a killed save never looks finished.
        os.replace(tmp, target)
    except Exception as exc:
        # The model in memory is fine; only the next load will be slow again.
        if not (target / "config.json").is_file():  # another process may have won the race: that is fine
            warnings.warn(f"could not cache the dequantised model in {target}: {_first_line(exc)}", stacklevel=3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _device_and_dtype(device: str, dtype: str) -> tuple[Any, Any]:
    dev = (device or "cpu").strip().lower()
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(dev)
    except RuntimeError as exc:
        raise ConfigError(f"unknown torch device {device!r}: {_first_line(exc)}") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but this torch build sees no CUDA device")
    name = (dtype or "float32").strip().lower()
    if name == "auto":
        name = "bfloat16" if torch_device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16, auto")
    return torch_device, getattr(torch, _DTYPES[name])


# -- the member ------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """A batch cache left by ``score`` or ``next_tokens``: each row a prefix shared with the member's own cache
    plus one candidate or branch; a later call continues from a row instead of evaluating it again (``_adopt``)."""

    past: Any
    #: the token ids row b of ``past`` holds (its right padding excluded; empty once a row holds junk)
    seqs: list[list[int]]
    #: next-token log-probabilities after each row's last token
    rows: list[Row | None]
    #: the prefix every row shares
    base: int
    #: leading positions computed in whole canonical chunks (see ``HFMember.prefill``)
    canonical: int
    #: positions in ``past`` (rows shorter than this are right-padded)
    length: int


class HFMember(PrefixCachedMember):
    """A causal LM run by transformers + torch, with a rollback-able KV cache and batched candidate scoring."""

    # torch's float32 kernels can move a number by about 1e-7 with the thread count: a call keeps its count.
    exact_across_threads = False

    def __init__(
        self,
        path_or_id: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        name: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        gguf_file: str | None = None,
        cache: str | Path | None = None,
    ) -> None:
        """``cache``: where dequantised GGUF models are kept (default ``cache_dir()``, i.e. ``ADAFUSE_CACHE``)."""
        super().__init__()
        _require_torch()
        source, gguf, default_name = _resolve(path_or_id, gguf_file)
        self.name = name or default_name
        self.source = source
        self.gguf_file = gguf
        self._fingerprint: str | None = None
        torch_device, torch_dtype = _device_and_dtype(device, dtype)
        # torch's thread count belongs to the thread that sets it, so each forward applies this member's own
        # (``_forward``). With no count, a CPU member shares the cores with the others (``SharesCores``,
        # ``decoding.parallel``); one given fewer threads than there are cores runs beside the others (torch
        # releases the GIL inside its kernels).
        cores = available_cores()
        self.shares_cores = n_threads is None and torch_device.type == "cpu"
        self.concurrent = bool(n_threads) and n_threads < cores
        self._threads = n_threads or cores
        vocab_meta: dict[str, Any] = {}
        try:
            if gguf is not None:
                root = Path(cache) if cache is not None else cache_dir()
                model, tokenizer, vocab_meta = _load_gguf(source, gguf, root)
            else:
                model, tokenizer = _from_pretrained(source, None, torch_dtype)
        except (ModelLoadError, ModelNotFoundError):
            raise
        except OSError as exc:
            where = f"{source}/{gguf}" if gguf else source
            if not Path(source).exists():
                raise ModelNotFoundError(
                    f"transformers model {source!r} is not a local directory and not in the local Hugging Face cache "
                    "(adafuse never downloads)"
                ) from exc
            raise ModelLoadError(f"transformers could not load {where}: {_first_line(exc)}") from exc
        except Exception as exc:
            where = f"{source}/{gguf}" if gguf else source
            raise ModelLoadError(f"transformers could not load {where}: {_first_line(exc)}") from exc
        self._model = model.to(device=torch_device, dtype=torch_dtype).eval()
        self._tok = tokenizer
        self.device = torch_device
        self.dtype = torch_dtype
        config = self._model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        out = self._model.get_output_embeddings()
        self.n_vocab = int(out.weight.shape[0]) if out is not None else int(text_config.vocab_size)
        max_pos = getattr(text_config, "max_position_embeddings", None)
        self.n_ctx = min(n_ctx, int(max_pos)) if max_pos else n_ctx
        self.stats = MemberStats()
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # some tokenizers keep several named templates
            template = template.get("default") or next(iter(template.values()), None)
        self.chat_template: str | None = template or None
        self._init_vocab(vocab_meta)
        self._init_forward()
        # The KV cache whose tokens ``_cache`` lists.
        self._past: Any = DynamicCache()
        # ``evidence`` of whole chunks, by the prompt prefix they end at: a shared few-shot prefix is scored once.
        self._chunk_evidence: OrderedDict[int, list[float]] = OrderedDict()
        # Batch caches of the last scoring and branch walk; a request's own, dropped by the next ``prefill``.
        self._batches: list[_Batch] = []
        self._closed = False

    # -- tokenizer ---------------------------------------------------------------------------------------------

    def _init_vocab(self, gguf_meta: dict[str, Any]) -> None:
        tok = self._tok
        added = getattr(tok, "added_tokens_decoder", {}) or {}
        # End-of-turn tokens by text, wherever they sit in the vocabulary: like llama.cpp, which also makes them
        # control tokens where a tokenizer left them ordinary ("</s>" in Gemma 3's and Qwen 2.5's vocabularies).
        eog_by_text = {int(i) for t, i in tok.get_vocab().items() if t in _EOG_TEXTS}
        self._special_ids = {int(i) for i, t in added.items() if getattr(t, "special", False)}
        self._special_ids.update(int(i) for i in getattr(tok, "all_special_ids", []) or [])
        self._special_ids.update(eog_by_text)
        self._special_ids.update(int(i) for i in gguf_meta.get("control_ids", []))
        # Added tokens keep their text verbatim, never in the vocabulary's byte-level or "\u2581" spelling.
        self._added_text = {
            int(i): str(getattr(t, "content", t)) for i, t in added.items() if int(i) not in self._special_ids
        }
        backend = getattr(tok, "backend_tokenizer", None)
        types: set[str] = set()
        if backend is not None:
            spec = json.loads(backend.to_str())
            types = set(_json_types(spec.get("decoder"))) | set(_json_types(spec.get("pre_tokenizer")))
        self._byte_level = "ByteLevel" in types or hasattr(tok, "byte_decoder")
        self._wordpiece = "WordPiece" in types
        self._piece_cache: dict[int, bytes] = {}
        # Which ids add_special_tokens puts in front of a text (BOS, usually): read off a probe, so that a
        # post-processor that also appends EOS never leaks an EOS into a context.
        with_special = tok.encode("a", add_special_tokens=True)
        plain = tok.encode("a", add_special_tokens=False)
        self._prefix: list[int] = []
        for i in range(len(with_special) - len(plain) + 1):
            if with_special[i : i + len(plain)] == plain:
                self._prefix = list(with_special[:i])
                break
        if gguf_meta.get("add_bos") is not None:
            # A GGUF file says outright whether its texts start with BOS; llama.cpp follows it, and so do we.
            bos = gguf_meta.get("bos_id")
            self._prefix = [int(bos)] if gguf_meta["add_bos"] and bos is not None else []
        # End of generation: every EOS the tokenizer, config and generation config name, plus end-of-turn tokens.
        # A GGUF file names its special tokens outright; transformers 4.x converted SmolLM2's with EOS = BOS.
        gguf_eos = gguf_meta.get("eos_id")
        eog: set[int] = {int(gguf_meta[k]) for k in ("eos_id", "eot_id", "eom_id") if gguf_meta.get(k) is not None}
        sources = [self._model.config, getattr(self._model, "generation_config", None)]
        for source in sources if gguf_eos is not None else [tok, *sources]:
            ids = getattr(source, "eos_token_id", None)
            if ids is not None:
                eog.update([int(ids)] if isinstance(ids, int) else [int(i) for i in ids])
        self._eog = frozenset(eog | eog_by_text)
        eos = gguf_eos if gguf_eos is not None else tok.eos_token_id
        if eos is None:
            eos = min(eog) if eog else None
        if eos is None:
            raise ModelLoadError(f"{self.source}: the model has no end-of-sequence token")
        self._eos = int(eos)
        bos = gguf_meta.get("bos_id")
        self._special_text = {
            "bos": str(tok.convert_ids_to_tokens(int(bos))) if bos is not None else str(tok.bos_token or ""),
            "eos": str(tok.convert_ids_to_tokens(self._eos)) if gguf_eos is not None else str(tok.eos_token or ""),
        }

    def tokenize(self, text: str, *, special: bool = False, bos: bool = True) -> list[int]:
        # split_special_tokens=True spells "<|im_end|>" in ordinary pieces: special text is parsed only on request.
        ids = self._tok.encode(text, add_special_tokens=False, split_special_tokens=not special)
        return (self._prefix + list(ids)) if bos else list(ids)

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._piece_cache.get(token_id)
        if piece is None:
            piece = self._surface(token_id)
            self._piece_cache[token_id] = piece
        return piece

    def _surface(self, token_id: int) -> bytes:
        if token_id in self._special_ids:
            return b""  # control tokens print nothing, as llama.cpp renders them without special=True
        if token_id in self._added_text:
            return self._added_text[token_id].encode("utf-8")
        text = self._tok.convert_ids_to_tokens(int(token_id))
        if text is None:  # ids past the tokenizer's vocabulary (padded embedding rows)
            return b""
        if self._byte_level:
            # Vocabulary tokens spell bytes as GPT-2's printable characters.
            return b"".join(bytes([_BYTE_DECODER[c]]) if c in _BYTE_DECODER else c.encode("utf-8") for c in text)
        m = _BYTE_TOKEN.fullmatch(text)
        if m:
            return bytes([int(m.group(1), 16)])
        if self._wordpiece:
            return text[2:].encode("utf-8") if text.startswith("##") else b" " + text.encode("utf-8")
        return text.replace("\u2581", " ").encode("utf-8")

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog

    @property
    def eos_id(self) -> int:
        return self._eos

    def special_text(self, which: str) -> str:
        return self._special_text["bos" if which == "bos" else "eos"]

    # -- forward passes ------------------------------------------------------------------------------------------

    def _init_forward(self) -> None:
        params = inspect.signature(self._model.forward).parameters
        # transformers 5 renamed ``past_key_values`` to ``cache``.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_mode = "full"
        if "logits_to_keep" in params:
            self._keep_mode = "index"
            # Newer models take a 2-D boolean mask and return only the rows asked for, flattened: exactly the
            # positions each candidate needs. Probe it once; older models index it as positions, so fall back.
            with contextlib.suppress(Exception), torch.inference_mode():
                ids = torch.zeros((2, 2), dtype=torch.long, device=self.device)
                mask = torch.tensor([[True, False], [False, True]], device=self.device)
                out = self._model(input_ids=ids, logits_to_keep=mask, use_cache=False)
                if tuple(out.logits.shape) == (2, self.n_vocab):
                    self._keep_mode = "mask"

    def _forward(self, input_ids: Any, past: Any, start: int, keep: Any) -> Any:
        """One forward of ``input_ids`` [B, T] at positions ``start...`` on ``past``; logits as ``keep`` selects."""
        if self._closed:
            raise MemberError(self.name, "the member is closed")
        if self.device.type == "cpu" and torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        batch, length = input_ids.shape
        positions = torch.arange(start, start + length, device=self.device).unsqueeze(0).expand(batch, -1)
        kwargs: dict[str, Any] = {self._cache_kw: past, "use_cache": True, "position_ids": positions}
        if keep is not None:
            kwargs["logits_to_keep"] = keep
        try:
            # Right padding only ever follows the real tokens, so the causal mask alone keeps every real token from
            # seeing a pad: no attention mask is needed, and the fast causal attention path stays available.
            out = self._model(input_ids=input_ids, **kwargs)
        except Exception as exc:
            self._reset()
            raise MemberError(self.name, f"forward pass failed: {_first_line(exc)}") from exc
        self.stats.forward_calls += 1
        return out.logits

    def set_threads(self, n: int) -> None:
        """Compute the next forwards with ``n`` threads (only for a CPU member loaded without a thread count, which
        ``decoding.parallel`` shares cores with, once per call: the numbers can move by about 1e-7 with the
        thread count, ``exact_across_threads``). The next forward applies it, in the thread that runs it."""
        if self.shares_cores:
            self._threads = n

    @property
    def threads(self) -> int:
        """The thread count the next forward computes with."""
        return self._threads

    def _reset(self) -> None:
        self._batches = []
        self._past = DynamicCache()
        self._forget()

    # -- cache hooks -------------------------------------------------------------------------------------------

    def _crop(self, n: int) -> bool:
        if n == 0:
            self._reset()
            return False
        try:
            # A negative count removes that many tokens, in transformers 4.x and 5.x alike.
            self._past.crop(n - len(self._cache))
        except Exception:
            self._reset()
            return False
        return True

    def _forward_chunk(self, chunk: list[int], pos: int, last_row: bool) -> Row | None:
        logits = self._chunk_logits(chunk, pos, 1 if self._keep_mode != "full" else None)
        if not last_row:
            return None
        return _row(logits[0, -1])

    def _chunk_logits(self, chunk: list[int], pos: int, keep: Any) -> Any:
        """One forward of ``chunk`` at ``pos`` onto the cache, logits as ``keep`` selects."""
        ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
        logits = self._forward(ids, self._past, pos, keep)
        self.stats.tokens_evaluated += len(chunk)
        return logits

    def _guard(self) -> contextlib.AbstractContextManager[Any]:
        return _locked_inference(self._lock)

    def _adopt(self, context: Sequence[int]) -> None:
        """Continue from the batch row that holds more of ``context`` than the member's own cache, if any."""
        best: tuple[_Batch, int] | None = None
        held = common_prefix_len(self._cache, context)
        for batch in self._batches:
            for b, seq in enumerate(batch.seqs):
                if len(seq) > held and (n := common_prefix_len(seq, context)) > held:
                    best, held = (batch, b), n
        if best is None:
            return
        batch, b = best
        # The batches were this round's; the member now walks on from one of them.
        self._batches = []
        seq = batch.seqs[b]
        past = DynamicCache()
        for idx, (k, v) in enumerate(_layer_kv(batch.past)):
            if k is None or k.numel() == 0:
                break
            past.update(k[b : b + 1, :, : len(seq)], v[b : b + 1, :, : len(seq)], idx)
        # A row at position p depends on tokens 0..p only: rows stay valid where the old cache spelled the same.
        same = common_prefix_len(self._cache, seq)
        for pos in [p for p in self._rows if p >= same]:
            del self._rows[pos]
        self._past = past
        self._cache = list(seq)
        row = batch.rows[b]
        if row is not None:
            self._remember(len(seq) - 1, row)
        self._canonical = min(self._canonical, batch.canonical, same - same % CHUNK)

    def _keep_batch(self, batch: _Batch) -> None:
        # The newest of each kind is what the next call can use; two bound the memory.
        self._batches = [*self._batches[-1:], batch]

    def _hold(self, prefix: Sequence[int]) -> None:
        """Make the cache hold exactly ``prefix``, evaluating only what it does not already hold."""
        self._adopt(prefix)
        self._truncate(common_prefix_len(self._cache, prefix))
        keep = len(self._cache)
        self.stats.tokens_reused += keep
        if keep < len(prefix):
            self._extend(prefix[keep:], want_last=False)

    def _row_after(self, context: Sequence[int]) -> Row:
        """The row after ``context``, continuing from a batch row that holds more of it than the cache does."""
        self._adopt(context)
        return super()._row_after(context)

    # -- primitives --------------------------------------------------------------------------------------------

    def prefill(self, context: Sequence[int]) -> None:
        with self._guard():
            self._batches = []
            super().prefill(context)

    def _compute_evidence(self, context: Sequence[int], wanted: Sequence[int] | None) -> list[float]:
        """Chunk j's rows predict tokens 64j+1 .. 64j+64. A whole chunk's are remembered by the prefix they cover
        (the same whatever ran before), so a later read that shares them skips them; a trailing part chunk is
        encoded afresh on the canonical chunks before it. Every row is computed whatever is ``wanted``: a forward
        gives them all, and they are freed with it.
        """
        n = len(context)
        self._batches = []
        out: list[float] = []
        start = 0
        while start + CHUNK < n and (hit := self._chunk_evidence.get(hash(tuple(context[: start + CHUNK + 1])))):
            out.extend(hit)
            start += CHUNK
        if start + 1 < n:
            # Only canonical chunks may stand under the rows read here, as under ``prefill``'s.
            keep = min(common_prefix_len(self._cache, context[:start]), self._canonical)
            self._truncate(keep - keep % CHUNK)
            self._hold(list(context[:start]))
            for lo, chunk in chunks(context[start:], start):
                logits = self._chunk_logits(chunk, lo, None)
                self._took(chunk, lo)
                targets = list(context[lo + 1 : min(lo + CHUNK + 1, n)])
                rows = torch.log_softmax(logits[0, : len(targets)].float(), dim=-1)
                part = rows[torch.arange(len(targets)), torch.tensor(targets)].tolist()
                out.extend(part)
                if len(targets) == CHUNK:
                    self._chunk_evidence[hash(tuple(context[: lo + CHUNK + 1]))] = part
                    while len(self._chunk_evidence) > _CHUNK_EVIDENCE_KEPT:
                        self._chunk_evidence.popitem(last=False)
            # The cache may end inside the prompt now: the next read re-extends it from there, chunk-aligned.
            self._rows.clear()
        return out

    def next_tokens(self, contexts: Sequence[Sequence[int]], k: int) -> list[TopK]:
        """``next_token`` for several contexts of one length that share a prefix (an uncertain member's branches,
        walked in lockstep): one batched forward per step instead of one per branch."""
        with self._guard():
            rows = self._rows_after_all([list(c) for c in contexts])
        return [row.top(k) for row in rows]

    def _rows_after_all(self, contexts: list[list[int]]) -> list[Row]:
        n = len(contexts[0])
        base = min(len(c) for c in contexts) - 1
        for c in contexts[1:]:
            base = min(base, common_prefix_len(contexts[0], c))
        if len(contexts) < 2 or base < 1 or any(len(c) != n for c in contexts):
            return [self._row_after(c) for c in contexts]
        walk = self._batches[-1] if self._batches else None
        if walk is not None and walk.base == base and walk.length == n - 1:
            where = {tuple(seq): b for b, seq in enumerate(walk.seqs) if seq}
            rows_of = [where.get(tuple(c[:-1])) for c in contexts]
            if None not in rows_of:
                return self._step_walk(walk, contexts, rows_of)  # type: ignore[arg-type]
        return self._start_walk(contexts, base)

    def _start_walk(self, contexts: list[list[int]], base: int) -> list[Row]:
        """One forward of every context's tokens after the shared prefix, on a batch-expanded copy of it."""
        prefix = contexts[0][:base]
        self._adopt(prefix)
        if common_prefix_len(self._cache, prefix) < base:
            self._hold(prefix)
        kv = self._prefix_kv(base)
        width = len(contexts[0]) - base
        ids = torch.tensor([c[base:] for c in contexts], dtype=torch.long, device=self.device)
        wanted = [[width - 1]] * len(contexts)
        past = _expanded(kv, len(contexts))
        logits = self._forward(ids, past, base, self._keep_for(wanted, width))
        self.stats.tokens_evaluated += width * len(contexts)
        self.stats.tokens_reused += base * len(contexts)
        rows = [_row(r[-1]) for r in self._rows_of(logits, wanted, width)]
        canonical = min(self._canonical, base - base % CHUNK)
        self._keep_batch(_Batch(past, [list(c) for c in contexts], list(rows), base, canonical, len(contexts[0])))
        return rows

    def _step_walk(self, walk: _Batch, contexts: list[list[int]], rows_of: list[int]) -> list[Row]:
        """One token more on every row of the walk's batch; rows no context continues get a filler and retire."""
        pos = len(contexts[0]) - 1
        ids = torch.zeros((len(walk.seqs), 1), dtype=torch.long, device=self.device)
        asked = dict(zip(rows_of, contexts, strict=True))
        for b, c in asked.items():
            ids[b, 0] = c[-1]
        wanted = [[0]] * len(walk.seqs)
        logits = self._forward(ids, walk.past, pos, self._keep_for(wanted, 1))
        walk.length += 1
        self.stats.tokens_evaluated += len(asked)
        self.stats.tokens_reused += pos * len(asked)
        rows = self._rows_of(logits, wanted, 1)
        out: dict[int, Row] = {}
        for b in range(len(walk.seqs)):
            if b in asked:
                out[b] = _row(rows[b][-1])
                walk.seqs[b] = list(asked[b])
                walk.rows[b] = out[b]
            else:
                walk.seqs[b] = []
                walk.rows[b] = None
        return [out[b] for b in rows_of]

    def _prefix_kv(self, base: int) -> list[tuple[Any, Any]]:
        """Views of every layer's keys and values for the first ``base`` cached positions."""
        kv = []
        for k, v in _layer_kv(self._past):
            if k is None or k.numel() == 0:
                break
            kv.append((k[:, :, :base], v[:, :, :base]))
        return kv

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        with self._guard():
            return self._score(requests)

    def _score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in requests]
        live = [i for i, (_, cont) in enumerate(requests) if cont]
        if not live:
            return out
        ctxs = [list(requests[i][0]) for i in live]
        conts = [list(requests[i][1]) for i in live]
        if any(not c for c in ctxs):
            raise PromptError(f"member {self.name!r}: empty context")
        seqs = [c + t for c, t in zip(ctxs, conts, strict=True)]
        longest = max(len(s) for s in seqs)
        if longest - 1 > self.n_ctx:
            raise PromptError(
                f"member {self.name!r}: context of {longest - 1} tokens exceeds its window of {self.n_ctx}"
            )
        # A continuation's last token is scored by the row before it; it is evaluated too (for the row after it,
        # which the next round reads if this candidate wins) unless that would overrun the window.
        through_last = longest <= self.n_ctx
        if not through_last:
            seqs = [s[:-1] for s in seqs]
        # The shared prefix is encoded once (usually it is already cached): everything up to the shortest context.
        base = min(len(c) for c in ctxs)
        for s in seqs[1:]:
            base = min(base, common_prefix_len(seqs[0], s))
        prefix = seqs[0][:base]
        self._adopt(prefix)
        first_row = None
        reused = self.stats.tokens_reused
        if any(len(c) == base for c in ctxs):
            first_row = self._row_after(prefix)
        if common_prefix_len(self._cache, prefix) < base:
            self._hold(prefix)
        # Row j of request r's suffix (position base + j) predicts cont[base + j + 1 - len(ctx)]: the first row it
        # needs is starts[r], where -1 stands for first_row, the row after the shared prefix.
        suffixes = [s[base:] for s in seqs]
        starts = [len(c) - 1 - base for c in ctxs]
        lps: list[list[float]] = [[] for _ in live]
        for r, cont in enumerate(conts):
            if starts[r] < 0:
                assert first_row is not None
                lps[r].append(first_row.logprob(cont[0]))
        # No forward only to read the rows after one-token candidates that first_row already scored.
        if any(len(s) > through_last for s in suffixes):
            self._score_batched(base, suffixes, starts, conts, lps, through_last)
        # Counted per request, as if each had been run on its own: every one reused the shared prefix.
        self.stats.tokens_reused = reused + base * len(live)
        for r, i in enumerate(live):
            out[i] = lps[r]
        return out

    def _score_batched(
        self,
        base: int,
        suffixes: list[list[int]],
        starts: list[int],
        conts: list[list[int]],
        lps: list[list[float]],
        through_last: bool,
    ) -> None:
        """All candidates in right-padded batches on a batch-expanded copy of the shared prefix's cache; the
        member's own cache keeps whatever it held beyond the prefix (its own proposal, which may win)."""
        kv = self._prefix_kv(base)
        per_token = sum(k.shape[1] * k.shape[3] * k.element_size() * 2 for k, _ in kv)
        batch = [r for r in range(len(suffixes)) if suffixes[r]]
        groups = list(self._groups(batch, base, suffixes, per_token))
        for group in groups:
            width = max(len(suffixes[r]) for r in group)
            ids = torch.zeros((len(group), width), dtype=torch.long, device=self.device)
            for b, r in enumerate(group):
                ids[b, : len(suffixes[r])] = torch.tensor(suffixes[r], dtype=torch.long)
            wanted = [list(range(max(starts[r], 0), len(suffixes[r]))) for r in group]
            past = _expanded(kv, len(group))
            logits = self._forward(ids, past, base, self._keep_for(wanted, width))
            self.stats.tokens_evaluated += sum(len(suffixes[r]) for r in group)
            after: list[Row | None] = []
            for r, rows, want in zip(group, self._rows_of(logits, wanted, width), wanted, strict=True):
                scored = len(want) - through_last
                if scored:
                    lps[r].extend(self._gather(rows[:scored], conts[r][len(conts[r]) - scored :]))
                if through_last:
                    after.append(_row(rows[-1]))
            if through_last and len(groups) == 1:
                seqs = [self._cache[:base] + suffixes[r] for r in group]
                canonical = min(self._canonical, base - base % CHUNK)
                self._keep_batch(_Batch(past, seqs, list(after), base, canonical, base + width))

    def _groups(self, batch: list[int], base: int, suffixes: list[list[int]], per_token: int) -> Iterator[list[int]]:
        """Split the batch so that its expanded cache stays under ``_BATCH_CACHE_BYTES``."""
        width = max(len(suffixes[r]) for r in batch)
        rows = max(1, _BATCH_CACHE_BYTES // max(1, per_token * (base + width)))
        for lo in range(0, len(batch), rows):
            yield batch[lo : lo + rows]

    def _keep_for(self, wanted: list[list[int]], width: int) -> Any:
        if self._keep_mode == "mask":
            mask = torch.zeros((len(wanted), width), dtype=torch.bool, device=self.device)
            for b, want in enumerate(wanted):
                mask[b, want] = True
            return mask
        if self._keep_mode == "index":
            lo = min(w[0] for w in wanted)
            hi = max(w[-1] for w in wanted)
            return torch.arange(lo, hi + 1, device=self.device)
        return None

    def _rows_of(self, logits: Any, wanted: list[list[int]], width: int) -> list[Any]:
        """Per batch row, the logits at its wanted suffix positions, as [len(wanted[b]), vocab] tensors."""
        if self._keep_mode == "mask":
            # Flattened in row-major order of the mask: row b's positions follow row b-1's.
            out, at = [], 0
            for want in wanted:
                out.append(logits[at : at + len(want)])
                at += len(want)
            return out
        lo = min(w[0] for w in wanted) if self._keep_mode == "index" else 0
        return [logits[b, [p - lo for p in want]] for b, want in enumerate(wanted)]

    @staticmethod
    def _gather(rows: Any, targets: Sequence[int]) -> list[float]:
        logp = torch.log_softmax(rows.float(), dim=-1)
        idx = torch.tensor(list(targets), dtype=torch.long, device=logp.device)
        return [float(x) for x in logp.gather(1, idx[:, None])[:, 0].cpu()]

    def fingerprint(self) -> str:
        """Of the GGUF file, or of the model folder's weights and configuration files."""
        if self._fingerprint is None:
            src = Path(self.source)
            if self.gguf_file is not None:
                files = [src / self.gguf_file if src.is_dir() else Path(self.gguf_file)]
            else:
                files = sorted(p for p in src.glob("*") if p.suffix in (".safetensors", ".bin", ".json"))
            files = [p for p in files if p.is_file()]
            self._fingerprint = file_fingerprint(files) if files else f"source:{self.source}"
        return self._fingerprint

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._past = None
        self._cache = []
        self._rows.clear()
        self._model = None
        if torch is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        # Not contextlib.suppress: module globals may already be None at interpreter exit.
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass


def _row(logits: Any) -> Row:
    """The kept row of one position's logits: float32 log-probabilities on the CPU."""
    return Row(torch.log_softmax(logits.float(), dim=-1).cpu().numpy())


@contextlib.contextmanager
def _locked_inference(lock: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with lock, torch.inference_mode():
        yield


def _layer_kv(cache: Any) -> list[tuple[Any, Any]]:
    """The (keys, values) tensors of every layer: ``cache.layers`` since transformers 4.54, lists before."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    return list(zip(getattr(cache, "key_cache", []), getattr(cache, "value_cache", []), strict=True))


def _expanded(kv: list[tuple[Any, Any]], batch: int) -> Any:
    """A fresh cache whose every row is the given batch-1 cache (``update`` copies the expanded views once)."""
    past = DynamicCache()
    for idx, (k, v) in enumerate(kv):
        past.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), idx)
    return past
