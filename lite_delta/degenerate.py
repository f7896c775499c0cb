"""The degenerate-answer rule, shared by the stages that read answers (evaluate's coherence figures, the train
stage's greedy probe, the report's quick check): is this answer still an assistant's, or a collapse?

An answer is degenerate when it has fewer than 5 real words; or one line makes up more than half of 4+ non-blank
lines; or more than half of its word 3-grams repeat others (20+ words); or fewer than half of its
whitespace-separated tokens hold a real word (symbol salad). Real words: ``utility_scorers.real_words``.
"""

from __future__ import annotations

from collections import Counter

from lite_delta.utility_scorers import real_words

MIN_WORDS = 5
REPEATED_LINE_SHARE = 0.5
MIN_LINES = 4
REPEATED_TRIGRAM_SHARE = 0.5
MIN_WORDS_FOR_TRIGRAMS = 20
MIN_WORDY_TOKEN_SHARE = 0.5
RULE = {"min_words": MIN_WORDS, "repeated_line_share": REPEATED_LINE_SHARE, "min_lines": MIN_LINES,
        "repeated_trigram_share": REPEATED_TRIGRAM_SHARE, "min_words_for_trigrams": MIN_WORDS_FOR_TRIGRAMS,
        "min_wordy_token_share": MIN_WORDY_TOKEN_SHARE}


def degenerate_reason(text: str) -> str | None:
    """Why an answer is degenerate (``few_words``, ``repeated_lines``, ``repeated_phrases``, ``symbols``), or None."""
    words = [w.lower() for w in real_words(text)]
    if len(words) < MIN_WORDS:
        return "few_words"
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    if len(lines) >= MIN_LINES and Counter(lines).most_common(1)[0][1] > REPEATED_LINE_SHARE * len(lines):
        return "repeated_lines"
    if len(words) >= MIN_WORDS_FOR_TRIGRAMS:
        trigrams = list(zip(words, words[1:], words[2:]))
        if 1 - len(set(trigrams)) / len(trigrams) > REPEATED_TRIGRAM_SHARE:
            return "repeated_phrases"
    tokens = text.split()
    if sum(1 for t in tokens if real_words(t)) < MIN_WORDY_TOKEN_SHARE * len(tokens):
        return "symbols"
    return None
