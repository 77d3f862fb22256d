"""Benchmark tasks: where the data and prompt live, how a prompt is laid out, when generation stops, and how
a raw generation becomes a prediction.

Prompt layouts (``build_prompt``), chosen to match the few-shot examples inside each prompt file so that the
model's most likely continuation is exactly one answer in the examples' format:

* triviaqa, nq: the paper's ``prompt + "\\n\\nQuestion: " + q + "\\nAnswer:"``. The model writes
  `` <answer>`` and then a newline, so generation stops at ``"\\n"``.
* squad: the prompt's examples are ``"Question:\\n<context> <question>\\nAnswer:\\n<answer>"``, so the test
  item uses the same layout: ``"Question:"`` on its own line, context and question joined by a space (the
  data separates them with a newline, the examples with a space), and ``"\\nAnswer:"``. The prompt ends at
  ``"Answer:"`` rather than ``"Answer:\\n"`` so that no tokenizer has to start from a dangling newline
  token; the model writes ``"\\n<answer>"``. A plain ``"\\n"`` stop would therefore cut the answer before it
  starts; squad stops at ``"\\n\\n"`` (the blank line after an example's answer) or ``"\\nQuestion"``, and
  :meth:`Task.extract_answer` keeps the first non-empty line.
* gsm8k: the paper's ``prompt + "\\n\\nQuestion: " + q + "\\nLet's think step by step\\n"``; generation ends
  right after the first complete ``\\boxed{...}`` (the examples end with "The answer is \\boxed{N}"), or at a
  new ``"Question:"`` if the model never boxes an answer.
* flores-en-de, flores-de-en: the prompt files are zero-shot instructions ending "translate the following
  sentences[ into German]:". The paper reused the QA layout (``Question: <src>\\nAnswer:``), which tells a
  base model nothing about the target language at the point it starts writing. Here the source sentence is
  labelled with its language and the prompt ends with the target language's label
  (``"\\n\\nEnglish: <src>\\nGerman:"``), the classic MT prompt: the model writes `` <translation>`` and a
  newline, so generation stops at ``"\\n"`` and the first line is the prediction.

In every layout the prompt file's trailing newlines are replaced by the separator its examples use between
shots (one blank line; two for gsm8k), so the test question is spaced exactly like the examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from adafuse.errors import ConfigError, DataError
from adafuse.evaluation import metrics

Kind = Literal["qa", "math", "translation"]
Layout = Literal["qa", "squad", "cot", "translation"]

TASK_NAMES: tuple[str, ...] = ("triviaqa", "nq", "squad", "gsm8k", "flores-en-de", "flores-de-en")
DATA_ENV = "ADAFUSE_DATA"

_HOW_TO_POINT = f"point --data-dir or the {DATA_ENV} environment variable at the benchmark data folder"
_LANGUAGES = {"en": "English", "de": "German"}

# Defaults per kind, used by custom_task when the caller gives none.
_KIND_STOP: dict[str, tuple[str, ...]] = {
    "qa": ("\n",),
    "math": ("\n\nQuestion:", "\nQuestion:"),
    "translation": ("\n",),
}
_KIND_MAX_NEW_TOKENS = {"qa": 32, "math": 320, "translation": 160}


@dataclass(frozen=True)
class Item:
    """One benchmark row. ``answer`` is a list of aliases for QA, the worked solution for math and the
    reference translation for translation; ``index`` is the 0-based row number among the file's rows."""

    index: int
    question: str
    answer: list[str] | str
    id: str | int | None = None


@dataclass(frozen=True)
class Task:
    """A benchmark: data file, prompt file, prompt layout, stop rules and scoring."""

    name: str
    kind: Kind
    prompt_path: Path
    data_path: Path
    stop: tuple[str, ...]
    max_new_tokens: int
    stop_at_boxed: bool
    layout: Layout = "qa"
    source_lang: str = ""
    target_lang: str = ""
    #: the zero-shot form: no worked answers, the question as people ask it (``Question: ...\nAnswer:``; GSM8K
    #: keeps its cue). Translation prompts are instructions, not worked answers: they stay.
    zero_shot: bool = False

    # ---------------------------------------------------------------------------------------------- data

    def items(self, offset: int = 0, limit: int | None = None) -> list[Item]:
        """Rows ``offset`` to ``offset + limit`` of the data file (all remaining rows when limit is None).

        The file is streamed and reading stops once ``limit`` rows are in hand; blank lines are skipped.
        A row that is not a JSON object with a ``question`` string and a usable ``answer`` raises DataError
        naming the file and the 1-based line number.
        """
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        out: list[Item] = []
        if limit == 0:
            return out
        for index, lineno, line in self._rows():
            if index < offset:
                continue
            out.append(self._parse(index, lineno, line))
            if limit is not None and len(out) >= limit:
                break
        return out

    def n_rows(self) -> int:
        """How many rows the data file holds (blank lines aside)."""
        return sum(1 for _ in self._rows())

    def _rows(self) -> Iterator[tuple[int, int, str]]:
        """(row index, 1-based line number, text) for each non-blank line, decoded strictly as UTF-8."""
        try:
            f = self.data_path.open("rb")
        except FileNotFoundError:
            raise DataError(f"{self.data_path}: data file not found; {_HOW_TO_POINT}") from None
        except OSError as e:
            raise DataError(f"{self.data_path}: cannot read data file: {e.strerror or e}") from None
        index = 0
        with f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{self.data_path}:{lineno}: not valid UTF-8 ({e.reason})") from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                yield index, lineno, line
                index += 1

    def _parse(self, index: int, lineno: int, line: str) -> Item:
        where = f"{self.data_path}:{lineno}"
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: corrupt JSON line ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with 'question' and 'answer'")
        missing = [k for k in ("question", "answer") if k not in row]
        if missing:
            raise DataError(f"{where}: row has no {' or '.join(repr(k) for k in missing)} field")
        question = row["question"]
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: 'question' must be a non-empty string")
        answer = self._parse_answer(row["answer"], where)
        row_id = row.get("id")
        if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
            row_id = None
        return Item(index=index, question=question, answer=answer, id=row_id)

    def _parse_answer(self, answer: Any, where: str) -> list[str] | str:
        if self.kind == "qa":
            if isinstance(answer, str):
                answer = [answer]
            if not isinstance(answer, list) or not all(isinstance(a, str) for a in answer):
                raise DataError(f"{where}: 'answer' must be a string or a list of strings")
            if not answer:
                raise DataError(f"{where}: 'answer' lists no gold alias")
            return answer
        if isinstance(answer, list) and len(answer) == 1:
            answer = answer[0]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{where}: 'answer' must be a non-empty string")
        if self.kind == "math" and metrics.gold_number(answer) is None:
            raise DataError(f"{where}: math answer states no final number ('the answer is N' or '#### N')")
        return answer

    # --------------------------------------------------------------------------------------------- prompt

    @cached_property
    def prompt_text(self) -> str:
        """The prompt file's text, read once."""
        try:
            return self.prompt_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{self.prompt_path}: prompt file not found; {_HOW_TO_POINT}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{self.prompt_path}: prompt file is not valid UTF-8 ({e.reason})") from None
        except OSError as e:
            raise DataError(f"{self.prompt_path}: cannot read prompt file: {e.strerror or e}") from None

    def build_prompt(self, question: str) -> str:
        """The full prompt for one question, in this task's layout (see the module docstring for why)."""
        head = self.prompt_text.rstrip()
        if self.layout == "translation" and self.source_lang and self.target_lang:
            return f"{head}\n\n{self.source_lang}: {question}\n{self.target_lang}:"
        if self.zero_shot:
            head = ""
        sep = ("\n\n\n" if self.layout == "cot" else "\n\n") if head else ""
        if self.layout == "cot":
            return f"{head}{sep}Question: {question}\nLet's think step by step\n"
        if self.layout == "squad":
            joined = " ".join(part.strip() for part in question.splitlines() if part.strip())
            return f"{head}{sep}Question:\n{joined}\nAnswer:"
        return f"{head}{sep}Question: {question}\nAnswer:"

    # ----------------------------------------------------------------------------------------- prediction

    def extract_answer(self, generated: str) -> str:
        """The prediction string scored against the gold, from the raw generated continuation.

        QA: the first non-empty line, without a repeated "Answer:" label and without the trailing period
        the few-shot examples teach ("George V." -> "George V"). Math: the generation unchanged, since
        the metric finds the boxed or last number itself. Translation: the first non-empty line, stripped.
        """
        if self.kind == "math":
            return generated
        line = _first_line(generated)
        if self.kind == "qa":
            if line[:7].lower() == "answer:":
                line = line[7:].strip()
            line = line.rstrip(".").rstrip()
        return line

    # -------------------------------------------------------------------------------------------- scoring

    def score(
        self, predictions: Sequence[str], golds: Sequence[list[str] | str], lenient: bool = False
    ) -> dict[str, float]:
        """Corpus scores in percent: em/f1 (+lenient) for QA, accuracy for math, bleu/chrf for translation."""
        return metrics.score_items(self.kind, predictions, golds, lenient=lenient)

    def correct(self, prediction: str, gold: list[str] | str, lenient: bool = False) -> float | None:
        """Per-item correctness (EM or lenient for QA, numeric for math, None for translation)."""
        return metrics.item_correct(self.kind, prediction, gold, lenient=lenient)


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


# -------------------------------------------------------------------------------------------------- loading


def _candidate_data_dirs() -> list[Path]:
    """Where the benchmark data is looked for when neither --data-dir nor ADAFUSE_DATA is given: a
    ``shared/data`` in the working directory, in the repository root, or beside the repository."""
    repo = Path(__file__).resolve().parents[3]
    return [Path.cwd() / "shared" / "data", repo / "shared" / "data", repo.parent / "shared" / "data"]


def default_data_dir() -> Path:
    """The data directory from ``ADAFUSE_DATA``, else the first existing conventional location.

    Raises DataError saying how to point at the data when there is none.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    for candidate in _candidate_data_dirs():
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(c) for c in _candidate_data_dirs())
    raise DataError(f"no benchmark data directory found (looked in {looked}); {_HOW_TO_POINT}")


def _task_spec(name: str, root: Path) -> Task:
    if name in ("triviaqa", "nq"):
        return Task(
            name=name,
            kind="qa",
            prompt_path=root / name / "prompt.txt",
            data_path=root / name / "dev.jsonl",
            stop=("\n",),
            max_new_tokens=32,
            stop_at_boxed=False,
            layout="qa",
        )
    if name == "squad":
        return Task(
            name=name,
            kind="qa",
            prompt_path=root / "squad" / "prompt.txt",
            data_path=root / "squad" / "dev.jsonl",
            stop=("\n\n", "\nQuestion"),
            max_new_tokens=32,
            stop_at_boxed=False,
            layout="squad",
        )
    if name == "gsm8k":
        return Task(
            name=name,
            kind="math",
            prompt_path=root / "gsm8k" / "prompt.txt",
            data_path=root / "gsm8k" / "dev.jsonl",
            stop=("\n\nQuestion:", "\nQuestion:"),
            max_new_tokens=320,
            stop_at_boxed=True,
            layout="cot",
        )
    src, tgt = name.removeprefix("flores-").split("-")
    return Task(
        name=name,
        kind="translation",
        prompt_path=root / "flores" / f"{src}-{tgt}.prompt.txt",
        data_path=root / "flores" / f"{src}-{tgt}.dev.jsonl",
        stop=("\n",),
        max_new_tokens=160,
        stop_at_boxed=False,
        layout="translation",
        source_lang=_LANGUAGES[src],
        target_lang=_LANGUAGES[tgt],
    )


def load_task(name: str, data_dir: Path | str | None = None, shots: int | None = None) -> Task:
    """The built-in task ``name`` with its files under ``data_dir`` (default: :func:`default_data_dir`);
    ``shots=0``: its zero-shot form (``Task.zero_shot``), None: the prompt file's worked answers.

    Raises DataError for an unknown name (listing the known ones) and for a missing directory or file
    (naming the path and how to point at the data).
    """
    if name not in TASK_NAMES:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise DataError(f"{root}: benchmark data directory not found; {_HOW_TO_POINT}")
    if shots not in (None, 0):
        raise ConfigError(f"shots must be 0 (no worked answers) or left out (the prompt file's), got {shots}")
    task = replace(_task_spec(name, root), zero_shot=shots == 0)
    for path, what in ((task.data_path, "data"), (task.prompt_path, "prompt")):
        if not path.is_file():
            raise DataError(f"{path}: {what} file for task {name!r} not found; {_HOW_TO_POINT}")
    return task


def custom_task(
    data_file: Path | str,
    prompt_file: Path | str,
    kind: Kind = "qa",
    stop: tuple[str, ...] | None = None,
    max_new_tokens: int | None = None,
    name: str | None = None,
) -> Task:
    """A task over any JSONL with ``question``/``answer`` rows and a prompt file.

    The layout is the paper's Question/Answer one (chain-of-thought with a boxed answer for ``kind="math"``).
    ``stop`` and ``max_new_tokens`` default per kind: ``("\\n",)`` and 32 for QA, the next "Question:" and
    320 for math (which also stops after a boxed answer), ``("\\n",)`` and 160 for translation.
    """
    if kind not in _KIND_STOP:
        raise ConfigError(f"unknown task kind {kind!r}; known kinds: {', '.join(_KIND_STOP)}")
    data_path, prompt_path = Path(data_file).expanduser(), Path(prompt_file).expanduser()
    for path, what in ((data_path, "data"), (prompt_path, "prompt")):
        if not path.is_file():
            raise DataError(f"{path}: {what} file not found")
    return Task(
        name=name or data_path.stem,
        kind=kind,
        prompt_path=prompt_path,
        data_path=data_path,
        stop=tuple(stop) if stop is not None else _KIND_STOP[kind],
        max_new_tokens=max_new_tokens if max_new_tokens is not None else _KIND_MAX_NEW_TOKENS[kind],
        stop_at_boxed=kind == "math",
        layout="cot" if kind == "math" else "qa",
    )
