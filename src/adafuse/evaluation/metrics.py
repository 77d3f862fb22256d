"""Scoring of predictions: SQuAD-style EM/F1, numeric match for GSM8K, corpus BLEU/chrF.

The definitions are the standard ones so that numbers are comparable with other work. The one exception
is :func:`lenient_match`, which reproduces the AdaFuse paper's own, looser QA scorer; it inflates scores
and is only reported when asked for.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from types import ModuleType
from typing import Literal

from adafuse.decoding.stopping import extract_boxed
from adafuse.errors import AdafuseError

Kind = Literal["qa", "math", "translation"]

#: Task names accepted wherever a kind is, so callers holding a task name need no lookup table of their own.
KIND_ALIASES: dict[str, Kind] = {
    "qa": "qa",
    "math": "math",
    "translation": "translation",
    "triviaqa": "qa",
    "nq": "qa",
    "squad": "qa",
    "gsm8k": "math",
    "flores-en-de": "translation",
    "flores-de-en": "translation",
}

# ----------------------------------------------------------------------------------------------------
# Question answering
# ----------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation and the articles a/an/the, collapse whitespace.

    This is the official SQuAD v1.1 / TriviaQA recipe; using it unchanged keeps EM/F1 comparable with
    published numbers (so "The Beatles." and "beatles" are the same answer, "U.S." and "US" too).
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _gold_list(golds: str | Sequence[str]) -> list[str]:
    """Accept a single gold string as a one-alias list; refuse an empty list (it would score 0 silently)."""
    if isinstance(golds, str):
        return [golds]
    out = list(golds)
    if not out:
        raise ValueError("no gold answers given: at least one alias is needed to score a prediction")
    return out


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold alias, else 0.0."""
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(g)) for g in _gold_list(golds))


def _f1_single(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        # Both empty is a perfect match; one empty side can share no token with the other.
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD token-overlap F1 on normalised text, maximised over gold aliases (0.0 to 1.0).

    An empty prediction scores 0 unless a gold alias also normalises to nothing.
    """
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1_single(pred_tokens, normalize_answer(g).split()) for g in _gold_list(golds))


def lenient_match(prediction: str, golds: str | Sequence[str]) -> float:
    """The AdaFuse paper's QA match: exact match, or one answer's tokens all appearing in the other's.

    INFLATED, opt-in only. The paper's TriviaQA/NQ scorers count a prediction as correct when, after
    normalisation, the token set of the shorter of (prediction, gold) is contained in the longer one, so the
    gold inside a rambling prediction ("it was george v of england" for "George V") and a fragment of the gold
    ("united" for "Newcastle United") both count. As in the paper, the containment is refused when the shorter
    side has 3 or more tokens and the two lengths differ by more than one. The paper's number-word conversion
    and stop-word removal are not reproduced. Report standard :func:`exact_match` as the primary number.
    """
    pred_tokens = normalize_answer(prediction).split()
    for gold in _gold_list(golds):
        gold_tokens = normalize_answer(gold).split()
        if not pred_tokens or not gold_tokens:
            continue  # an empty side would be "contained" in anything
        if pred_tokens == gold_tokens:
            return 1.0
        small, big = sorted((pred_tokens, gold_tokens), key=len)
        if len(small) >= 3 and len(big) - len(small) > 1:
            continue
        if set(small) <= set(big):
            return 1.0
    return 0.0


# ----------------------------------------------------------------------------------------------------
# Math (GSM8K)
# ----------------------------------------------------------------------------------------------------

# A number as written in prose or LaTeX: optional minus, optional currency sign (LaTeX-escaped or not), then
# either comma-grouped thousands or plain digits, with an optional decimal part. It must not be glued to a
# word or another decimal point on its left ("x2", "1.2.3"), and a trailing period ("18.") is not consumed.
_NUMBER = re.compile(
    r"""
    (?<![\w.])
    (?P<sign>[-\u2212])?
    (?:\\?\$|[\u20ac\u00a3\u00a5])?
    \s?
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    (?!\d|,\d)
    """,
    re.VERBOSE,
)
_FRACTION = re.compile(
    r"^(?P<sign>-?)\\[dt]?frac\{(?P<a>[^{}]+)\}\{(?P<b>[^{}]+)\}$"  # \frac{a}{b}, \dfrac, \tfrac
    r"|^(?P<sign2>-?)(?P<c>[\d.,]+)/(?P<d>[\d.,]+)$"  # a/b
)
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_GOLD_MARKERS = re.compile(r"(?:####|the answer is)\s*:?\s*(?P<tail>[^\n]*)", re.IGNORECASE)
_TOLERANCE = Decimal("1e-6")


def _canonical(d: Decimal) -> str:
    """Plain decimal text without exponent, trailing zeros or a negative zero: 1234.50 -> "1234.5"."""
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _to_decimal(sign: str | None, digits: str) -> Decimal | None:
    try:
        value = Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None
    return -value if sign else value


def _numbers(text: str) -> list[Decimal]:
    out = []
    for m in _NUMBER.finditer(text):
        value = _to_decimal(m.group("sign"), m.group("num"))
        if value is not None:
            out.append(value)
    return out


def _boxed_number(content: str) -> str | None:
    """The number inside a \\boxed{}: "\\$1,000" -> "1000", "x = 5" -> "5", "\\frac{1}{2}" -> "0.5".

    Units and LaTeX spacing are tolerated; when there is an equation the right-hand side is the answer.
    """
    s = _LATEX_WRAPPERS.sub(r" \1 ", content)
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<=\d)\\[,!;: ](?=\d)", "", s)  # LaTeX thin spaces used as thousands separators
    s = s.replace("\\left", "").replace("\\right", "")
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.strip().strip("$").strip()
    frac = _FRACTION.match(s.replace(" ", ""))
    if frac:
        sign = frac.group("sign") or frac.group("sign2")
        a = _to_decimal(None, frac.group("a") or frac.group("c"))
        b = _to_decimal(None, frac.group("b") or frac.group("d"))
        if a is not None and b is not None and b != 0:
            value = a / b
            return _canonical(-value if sign else value)
    numbers = _numbers(s)
    return _canonical(numbers[0]) if numbers else None


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a generation, as canonical decimal text, or None.

    The first complete ``\\boxed{...}`` wins, because the prompts ask for the answer there; a boxed answer
    with no number in it yields None rather than a number picked from the reasoning. Without a box the last
    number in the text is taken (the usual GSM8K convention). Thousands commas, currency signs, a minus sign,
    decimals and a sentence-final period are handled: "$1,234.50" -> "1234.5", "18." -> "18", "-3" -> "-3".
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return _boxed_number(boxed)
    numbers = _numbers(text)
    return _canonical(numbers[-1]) if numbers else None


def gold_number(answer_text: str) -> str | None:
    """The final number of a GSM8K gold solution, or None if it states none.

    The development data ends every solution with "Therefore, the answer is N"; the original GSM8K format
    "#### N" is accepted too. The last such marker counts. A gold that is just a number is taken as is.
    """
    markers = list(_GOLD_MARKERS.finditer(answer_text))
    for m in reversed(markers):
        numbers = _numbers(m.group("tail"))
        if numbers:
            return _canonical(numbers[0])
    if not markers:
        bare = answer_text.strip().rstrip(".")
        if bare and _NUMBER.fullmatch(bare):
            return _canonical(_numbers(bare)[0])
    return None


def numeric_match(prediction: str, gold_answer_text: str) -> float:
    """1.0 if the prediction's final number equals the gold's as a number ("18.0" == "18"), else 0.0.

    Numbers are compared as decimals with a tolerance of 1e-6 (relative for large values) so a fraction
    answer such as \\frac{1}{3} is not failed on rounding. A gold without a final number is a data error
    and raises ValueError instead of silently scoring 0.
    """
    gold = gold_number(gold_answer_text)
    if gold is None:
        raise ValueError(f"gold has no final number ('the answer is N' or '#### N'): {gold_answer_text!r}")
    pred = extract_final_number(prediction)
    if pred is None:
        return 0.0
    g, p = Decimal(gold), Decimal(pred)
    return float(abs(p - g) <= _TOLERANCE * max(Decimal(1), abs(g)))


# ----------------------------------------------------------------------------------------------------
# Translation
# ----------------------------------------------------------------------------------------------------


def _sacrebleu() -> ModuleType:
    try:
        import sacrebleu
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AdafuseError("BLEU and chrF need sacrebleu: pip install 'adafuse[eval]'") from e
    return sacrebleu


def _check_parallel(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU (0-100) with one reference per sentence and the built-in 13a tokeniser.

    13a is sacreBLEU's default and needs no download, so scores are reproducible offline and comparable with
    the usual WMT/FLORES numbers. An empty corpus scores 0.
    """
    _check_parallel(predictions, references)
    if not predictions:
        return 0.0
    sb = _sacrebleu()
    return float(sb.metrics.BLEU(tokenize="13a").corpus_score(list(predictions), [list(references)]).score)


def corpus_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU corpus chrF (0-100) with default settings (character 6-grams, beta 2, no tokeniser)."""
    _check_parallel(predictions, references)
    if not predictions:
        return 0.0
    sb = _sacrebleu()
    return float(sb.metrics.CHRF().corpus_score(list(predictions), [list(references)]).score)


# ----------------------------------------------------------------------------------------------------
# Per task kind
# ----------------------------------------------------------------------------------------------------


def resolve_kind(kind: str) -> Kind:
    """Map a kind or a task name to one of "qa", "math", "translation"; ValueError for anything else."""
    try:
        return KIND_ALIASES[kind]
    except KeyError:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(KIND_ALIASES)}") from None


def _reference(gold: str | Sequence[str]) -> str:
    """Translation gold as one string; a list (as a generic loader may give) contributes its first entry."""
    if isinstance(gold, str):
        return gold
    return _gold_list(gold)[0]


def _percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def score_items(
    kind: str,
    predictions: Sequence[str],
    golds: Sequence[str | Sequence[str]],
    lenient: bool = False,
) -> dict[str, float]:
    """Corpus scores for one task, all in percent (0-100).

    qa: ``{"em", "f1"}`` plus ``"lenient"`` when ``lenient`` is set; math: ``{"accuracy"}``;
    translation: ``{"bleu", "chrf"}``. ``kind`` may also be a task name ("gsm8k", "flores-en-de", ...).
    """
    k = resolve_kind(kind)
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold answers")
    if k == "qa":
        scores = {
            "em": _percent([exact_match(p, g) for p, g in zip(predictions, golds, strict=True)]),
            "f1": _percent([token_f1(p, g) for p, g in zip(predictions, golds, strict=True)]),
        }
        if lenient:
            lenient_hits = [lenient_match(p, g) for p, g in zip(predictions, golds, strict=True)]
            scores["lenient"] = _percent(lenient_hits)
        return scores
    if k == "math":
        correct = [numeric_match(p, _reference(g)) for p, g in zip(predictions, golds, strict=True)]
        return {"accuracy": _percent(correct)}
    refs = [_reference(g) for g in golds]
    return {"bleu": corpus_bleu(predictions, refs), "chrf": corpus_chrf(predictions, refs)}


def item_correct(kind: str, prediction: str, gold: str | Sequence[str], lenient: bool = False) -> float | None:
    """Per-item correctness for a run's per-line record: EM (or the lenient match) for QA, numeric match
    for math, and None for translation, where only corpus-level BLEU/chrF are meaningful."""
    k = resolve_kind(kind)
    if k == "qa":
        return lenient_match(prediction, gold) if lenient else exact_match(prediction, gold)
    if k == "math":
        return numeric_match(prediction, _reference(gold))
    return None


def item_quality(kind: str, prediction: str, gold: str | Sequence[str]) -> float:
    """How good one prediction is, from 0 to 1: a controller's training label. QA: the mean of exact match and
    token F1 (F1 credits a near miss, EM is what is reported); math: numeric match; translation: sentence chrF."""
    k = resolve_kind(kind)
    if k == "qa":
        return 0.5 * (exact_match(prediction, gold) + token_f1(prediction, gold))
    if k == "math":
        return numeric_match(prediction, _reference(gold))
    return float(_sacrebleu().metrics.CHRF().sentence_score(prediction, [_reference(gold)]).score) / 100.0
