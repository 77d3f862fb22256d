"""Metric definitions: SQuAD EM/F1, the paper's lenient match, GSM8K numbers, corpus BLEU/chrF, per-kind scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adafuse.evaluation.metrics import (
    corpus_bleu,
    corpus_chrf,
    exact_match,
    extract_final_number,
    gold_number,
    item_correct,
    lenient_match,
    normalize_answer,
    numeric_match,
    score_items,
    token_f1,
)

# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Beatles!", "beatles"),
        ("An apple a day", "apple day"),
        ("  U.S.A.  ", "usa"),
        ("George\tV.", "george v"),
        ("Theatre", "theatre"),  # "the" inside a word is not an article
        ("Ludo (album).", "ludo album"),
        ("the", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# ---------------------------------------------------------------------------------------------------- EM


def test_exact_match_takes_best_alias() -> None:
    aliases = ["Sunset Blvd", "West Sunset Boulevard", "Sunset Boulevard"]
    assert exact_match("sunset boulevard.", aliases) == 1.0
    assert exact_match("Sunset Blvd.", aliases) == 1.0
    assert exact_match("Sunset", aliases) == 0.0


def test_exact_match_ignores_articles_case_and_punctuation() -> None:
    assert exact_match("the Beatles", ["Beatles"]) == 1.0
    assert exact_match("George V.", "George V") == 1.0  # a bare string is one alias
    assert exact_match("George VI", ["George V"]) == 0.0


def test_exact_match_empty_prediction() -> None:
    assert exact_match("", ["Prince"]) == 0.0
    assert exact_match("", ["The"]) == 1.0  # the gold also normalises to nothing


def test_no_gold_alias_is_an_error() -> None:
    with pytest.raises(ValueError, match="no gold"):
        exact_match("x", [])
    with pytest.raises(ValueError, match="no gold"):
        token_f1("x", [])


# ---------------------------------------------------------------------------------------------------- F1


def test_token_f1_partial_overlap() -> None:
    # SQuAD drops the hyphen without a space: "campbellbannerman" is one token, so one of two tokens matches.
    assert token_f1("Henry Campbell", ["Henry Campbell-Bannerman"]) == pytest.approx(0.5)
    # With a spaced alias: precision 2/2, recall 2/3.
    assert token_f1("Henry Campbell", ["Henry Campbell-Bannerman", "Henry Campbell Bannerman"]) == pytest.approx(0.8)


def test_token_f1_exact_and_disjoint() -> None:
    assert token_f1("The Newcastle United.", ["Newcastle United"]) == 1.0
    assert token_f1("Liverpool", ["Newcastle United"]) == 0.0


def test_token_f1_counts_repeated_tokens_once_each() -> None:
    # pred "new new york" vs gold "new york": 2 shared tokens, precision 2/3, recall 1.
    assert token_f1("new new york", ["New York"]) == pytest.approx(0.8)


def test_token_f1_empty_prediction() -> None:
    assert token_f1("", ["Prince"]) == 0.0
    assert token_f1("   ", ["an"]) == 1.0
    assert token_f1("Prince", ["a"]) == 0.0


# ------------------------------------------------------------------------------------------------ lenient


def test_lenient_accepts_gold_inside_prediction_that_em_rejects() -> None:
    assert exact_match("It was George V", ["George V"]) == 0.0
    assert lenient_match("It was George V", ["George V"]) == 1.0


def test_lenient_accepts_fragment_of_gold() -> None:
    # The inflation the paper's scorer has: a partial name counts.
    assert lenient_match("United", ["Newcastle United"]) == 1.0
    assert exact_match("United", ["Newcastle United"]) == 0.0


def test_lenient_length_guard_and_misses() -> None:
    # Shorter side has 3 tokens and the lengths differ by more than one: not a match, as in the paper.
    assert lenient_match("battle of hastings fought in england in 1066", ["Battle of Hastings"]) == 0.0
    assert lenient_match("Liverpool", ["Newcastle United"]) == 0.0
    assert lenient_match("", ["Prince"]) == 0.0
    assert lenient_match("anything", ["the"]) == 0.0  # an empty gold is not contained in everything


# ------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So she pays $1,000.00 in total", "1000"),
        ("1,234.50", "1234.5"),
        ("The temperature fell to -3", "-3"),
        ("They sold 18.", "18"),
        ("It costs 0.50 dollars", "0.5"),
        ("first 3 then 7 then 42", "42"),
        ("10-3=7", "7"),  # a hyphen glued to a digit is subtraction, not a sign
        ("x = -5", "-5"),
        ("costs -$7 net", "-7"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_final_number_plain_text(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{\\$1,000}", "1000"),
        ("The answer is \\boxed{18} and 19 more words 20", "18"),  # boxed wins over the last number
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{-\\frac{3}{4}}", "-0.75"),
        ("\\boxed{\\text{\\$}12}", "12"),
        ("\\boxed{12 \\text{ cm}^{2}}", "12"),  # nested braces, unit with exponent
        ("\\boxed{3 \\times 4 = 12}", "12"),  # right-hand side of an equation
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{18.0}", "18"),
        ("worked 5 hours, \\boxed{x}", None),  # a boxed non-number is not replaced by a guess
        ("unfinished \\boxed{12", "12"),  # incomplete box: fall back to the last number
    ],
)
def test_extract_final_number_boxed(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


def test_gold_number_formats() -> None:
    assert gold_number("So 6 + 6 = 12.\nTherefore, the answer is 12") == "12"
    assert gold_number("Therefore, the answer is 132,000") == "132000"
    assert gold_number("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18") == "18"
    assert gold_number("42") == "42"
    assert gold_number("She has 3 apples and 4 pears.") is None


def test_numeric_match_compares_numbers_not_strings() -> None:
    gold = "She earns 9 * 2 = 18 dollars.\nTherefore, the answer is 18"
    assert numeric_match("... so \\boxed{18.0}", gold) == 1.0
    assert numeric_match("She makes $18.", gold) == 1.0
    assert numeric_match("\\boxed{18.5}", gold) == 0.0
    assert numeric_match("\\boxed{180}", gold) == 0.0
    assert numeric_match("I do not know", gold) == 0.0
    assert numeric_match("\\boxed{\\frac{1}{3}}", "#### 0.3333333333") == 1.0


def test_numeric_match_rejects_gold_without_number() -> None:
    with pytest.raises(ValueError, match="no final number"):
        numeric_match("\\boxed{1}", "no number here")


# -------------------------------------------------------------------------------------------- BLEU / chrF


def test_bleu_and_chrf_identical_vs_different() -> None:
    refs = ["The cat sat on the mat.", "It is raining heavily in Berlin today."]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_chrf(refs, refs) == pytest.approx(100.0)
    close = ["The cat sat on a mat.", "It is raining heavily in Berlin."]
    far = ["Dogs bark loudly.", "Nothing matches here at all."]
    assert 0.0 < corpus_bleu(close, refs) < 100.0
    assert corpus_bleu(far, refs) < corpus_bleu(close, refs)
    assert corpus_chrf(far, refs) < corpus_chrf(close, refs) < 100.0


def test_bleu_empty_and_mismatched() -> None:
    assert corpus_bleu([], []) == 0.0
    assert corpus_chrf([], []) == 0.0
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        corpus_bleu(["a"], ["a", "b"])


def test_bleu_on_flores_references(benchmark_dir: Path) -> None:
    rows = [json.loads(line) for line in (benchmark_dir / "flores" / "en-de.dev.jsonl").open(encoding="utf-8")]
    german = [r["answer"] for r in rows]
    english = [r["question"] for r in rows]
    assert corpus_bleu(german, german) == pytest.approx(100.0)
    # Copying the English source scores far below a real translation on both metrics.
    assert corpus_bleu(english, german) < 15.0
    assert corpus_chrf(english, german) < 50.0


# ------------------------------------------------------------------------------------------- per kind


def test_score_items_qa() -> None:
    preds = ["George V.", "It was Harry Patch", "Ludo"]
    golds = [["George V", "King George V"], ["Harry Patch"], ["Snakes and ladders"]]
    scores = score_items("qa", preds, golds)
    assert set(scores) == {"em", "f1"}
    assert scores["em"] == pytest.approx(100 / 3)
    # F1: 1.0, 2 of 4 tokens ("it was harry patch") -> 2*0.5*1/1.5 = 2/3, and 0.
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    lenient = score_items("triviaqa", preds, golds, lenient=True)
    assert lenient["lenient"] == pytest.approx(200 / 3)
    assert lenient["em"] == scores["em"]


def test_score_items_math_and_translation() -> None:
    golds = ["Therefore, the answer is 12", "#### 7"]
    assert score_items("math", ["\\boxed{12}", "\\boxed{8}"], golds) == {"accuracy": 50.0}
    assert score_items("gsm8k", ["12", "7.0"], golds) == {"accuracy": 100.0}
    refs = ["Wir haben jetzt vier Monate alte Mäuse.", "Er fügte hinzu."]
    scores = score_items("translation", refs, refs)
    assert set(scores) == {"bleu", "chrf"}
    assert scores["bleu"] == pytest.approx(100.0)


def test_score_items_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown task kind"):
        score_items("summarisation", ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        score_items("qa", ["a", "b"], [["a"]])
    assert score_items("qa", [], []) == {"em": 0.0, "f1": 0.0}


def test_item_correct_per_kind() -> None:
    assert item_correct("qa", "the beatles", ["Beatles"]) == 1.0
    assert item_correct("qa", "It was the Beatles", ["Beatles"]) == 0.0
    assert item_correct("qa", "It was the Beatles", ["Beatles"], lenient=True) == 1.0
    assert item_correct("math", "\\boxed{132,000}", "Therefore, the answer is 132,000") == 1.0
    assert item_correct("flores-en-de", "Hallo", "Hallo") is None
