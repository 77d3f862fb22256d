"""Word boundaries on surface text, independent of any tokenizer.

A word is complete when the text holds a whitespace character after at least one non-space character; leading
whitespace belongs to the word it precedes. Candidates keep the exact surface string (spaces, newlines,
punctuation) - they are never re-joined or normalised.
"""

from __future__ import annotations


def word_ends(text: str) -> list[int]:
    """Offsets where a word ends: each is the index of the whitespace that follows a non-space run.

    ``word_ends(" George V. was")`` is ``[7, 10]``: the words are " George", " V." and the unfinished " was".
    """
    ends: list[int] = []
    seen_text = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if seen_text:
                ends.append(i)
                seen_text = False
        else:
            seen_text = True
    return ends


def first_words(text: str, n: int) -> str:
    """The first ``n`` complete-or-not words of ``text``, surface kept."""
    ends = word_ends(text)
    return text if len(ends) < n else text[: ends[n - 1]]


def decode_utf8_prefix(data: bytes) -> str:
    """Decode bytes, holding back an incomplete multi-byte character at the end (a token may split one)."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")
