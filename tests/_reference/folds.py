"""The fold split as the folds module's docstring specifies it, written from that text: questions in canonical order
(sha256 of the stripped text, ties by position), permuted by numpy's default_rng(seed), cut into near-equal blocks
(the first ``n % k`` blocks one longer); ``contiguous``: the file order cut into those blocks."""

from __future__ import annotations

import hashlib

import numpy as np


def reference_question_id(question: str) -> str:
    return hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[:16]


def reference_folds(questions: list[str], k: int, seed: int = 42, contiguous: bool = False) -> list[int]:
    n = len(questions)
    if contiguous:
        order = list(range(n))
    else:
        canonical = sorted(range(n), key=lambda i: (hashlib.sha256(questions[i].strip().encode()).hexdigest(), i))
        order = [canonical[j] for j in np.random.default_rng(seed).permutation(n).tolist()]
    sizes = [n // k + (1 if f < n % k else 0) for f in range(k)]
    folds, start = [0] * n, 0
    for f, size in enumerate(sizes):
        for i in order[start:start + size]:
            folds[i] = f
        start += size
    return folds
