"""The one question-level fold split, shared by fit-directions and every truthfulqa_iti task.

Shuffled (default): fold membership depends only on the set of questions and the seed, not on how the file is
sorted: questions are put in a canonical order (by the sha256 of their stripped text), then permuted with the seed.
The reference instead cut the file order into contiguous blocks (``contiguous=True`` reproduces it), which makes
the test folds identical for every seed and an accident of file order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import ITIError


def question_id(question: str) -> str:
    """A stable id for a question: the first 16 hex digits of the sha256 of its stripped text."""
    return hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[:16]


def fold_assignment(questions: list[str], num_folds: int, seed: int = 42, contiguous: bool = False) -> list[int]:
    """The fold (0..num_folds-1) of each question, in the order given."""
    n = len(questions)
    if num_folds < 2:
        raise ITIError(f"num_folds={num_folds}: need at least 2 folds")
    if n < num_folds:
        raise ITIError(f"num_folds={num_folds} is more than the {n} questions")
    if contiguous:
        order = np.arange(n)
    else:
        ids = [question_id(q) for q in questions]
        canonical = sorted(range(n), key=lambda i: (ids[i], i))
        perm = np.random.default_rng(seed).permutation(n)
        order = np.asarray(canonical)[perm]
    folds = [0] * n
    for f, block in enumerate(np.array_split(order, num_folds)):
        for i in block.tolist():
            folds[i] = f
    return folds


def fold_indices(questions: list[str], num_folds: int, fold: int, seed: int = 42,
                 contiguous: bool = False) -> tuple[list[int], list[int]]:
    """(train, test) question indices for ``fold``: test is fold ``fold``, train every other fold."""
    if not 0 <= fold < num_folds:
        raise ITIError(f"fold={fold} is outside 0..{num_folds - 1}")
    assignment = fold_assignment(questions, num_folds, seed, contiguous)
    test = [i for i, f in enumerate(assignment) if f == fold]
    train = [i for i, f in enumerate(assignment) if f != fold]
    return train, test
