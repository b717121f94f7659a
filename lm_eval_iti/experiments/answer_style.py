"""Answer style: which answers hedge or negate, and the style and length strata of questions (pure, no torch).

TruthfulQA's true answers often deny a myth ("No, ...", "Nothing happens") or hedge ("It depends", "I have no
comment"). A direction that reads this style rather than truth would also raise the MC scores; the style control
(``controls.style_directions``) fits one, and ``question_strata`` splits ITI's gain by the style and length of each
question's true MC1 answer (``comparisons.strata_gains``).
"""

from __future__ import annotations

import re
import statistics

import numpy as np

# An answer is "hedged or negated" when one of its words is in this list, or ends in n't (isn't, don't, can't).
HEDGE_WORDS = ("not", "no", "never", "nothing", "none", "nobody", "nowhere", "neither", "nor", "cannot",
               "may", "might", "could", "perhaps", "possibly", "maybe", "depends", "depend", "unknown", "unclear",
               "uncertain", "comment")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
HEDGED, PLAIN = "hedged/negated", "plain"


def is_hedged(text: str) -> bool:
    """Whether ``text`` hedges or negates: a word of ``HEDGE_WORDS`` or a word ending in n't (case-insensitive)."""
    words = _WORD.findall(str(text).lower().replace("\u2019", "'"))
    return any(w in HEDGE_WORDS or w.endswith("n't") for w in words)


def style_labels(answers: list[str]) -> np.ndarray:
    """int64 [n]: 1 for a hedged/negated answer, 0 for a plain one."""
    return np.asarray([int(is_hedged(a)) for a in answers], dtype=np.int64)


def true_mc1_answer(doc: dict) -> str:
    """The question's true MC1 answer (the choice labelled 1 in ``mc1_targets``; the first true ``mc2_targets``
    choice in data without MC1)."""
    targets = doc.get("mc1_targets") or doc["mc2_targets"]
    return next(c for c, label in zip(targets["choices"], targets["labels"]) if int(label) == 1)


def question_strata(docs: list[dict]) -> dict:
    """{"style": {question_id: HEDGED | PLAIN}, "length": {question_id: "short (≤ m words)" | "long (> m words)"},
    "median_words": m}: by each question's true MC1 answer; m is the median word count over ``docs``."""
    from ..folds import question_id

    answers = {question_id(d["question"]): true_mc1_answer(d) for d in docs}
    words = {q: len(a.split()) for q, a in answers.items()}
    median = statistics.median(words.values()) if words else 0
    short, long = f"short (≤ {median:g} words)", f"long (> {median:g} words)"
    return {"style": {q: HEDGED if is_hedged(a) else PLAIN for q, a in answers.items()},
            "length": {q: short if n <= median else long for q, n in words.items()},
            "median_words": median}
