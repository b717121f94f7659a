"""lm_eval_iti.folds against the specified split (tests/_reference/folds.py) and its properties: a partition, near
equal folds, membership independent of file order, seeded, one-line errors."""

from __future__ import annotations

import random

import pytest
from _reference.folds import reference_folds, reference_question_id
from conftest import shared_data

from lm_eval_iti import data
from lm_eval_iti.errors import ITIError
from lm_eval_iti.folds import fold_assignment, fold_indices, question_id

SYNTHETIC = [f"Synthetic question number {i}?" for i in range(53)]


def test_question_id_is_the_sha256_prefix_of_the_stripped_text():
    for q in ("What is 2+2?", "  What is 2+2?\n", "Ünïcode — “quotes”?"):
        assert question_id(q) == reference_question_id(q) and len(question_id(q)) == 16
    assert question_id("  a ") == question_id("a") != question_id("b")


@pytest.mark.parametrize("k, seed, contiguous", [(2, 42, False), (3, 7, False), (5, 0, False), (2, 42, True),
                                                 (4, 1, True)])
def test_assignment_equals_the_specified_split_on_synthetic_questions(k, seed, contiguous):
    assert fold_assignment(SYNTHETIC, k, seed, contiguous) == reference_folds(SYNTHETIC, k, seed, contiguous)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_assignment_on_truthfulqa_v0_is_a_near_equal_partition_as_specified(k):
    questions = [r["question"] for r in data.load_mc(shared_data("truthfulqa", "v0"))]
    folds = fold_assignment(questions, k)
    assert folds == reference_folds(questions, k)
    sizes = [folds.count(f) for f in range(k)]
    assert sum(sizes) == len(questions) == 817 and max(sizes) - min(sizes) <= 1
    for fold in range(k):
        train, test = fold_indices(questions, k, fold)
        assert sorted(train + test) == list(range(817)) and not set(train) & set(test)
        assert test == [i for i, f in enumerate(folds) if f == fold]


def test_membership_depends_on_the_questions_not_their_order():
    shuffled = SYNTHETIC[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != SYNTHETIC
    before = dict(zip(SYNTHETIC, fold_assignment(SYNTHETIC, 3, seed=5)))
    after = dict(zip(shuffled, fold_assignment(shuffled, 3, seed=5)))
    assert before == after
    # the contiguous (reference) split is an accident of file order, and every seed gives the same folds
    assert fold_assignment(SYNTHETIC, 3, seed=1, contiguous=True) == fold_assignment(SYNTHETIC, 3, seed=2,
                                                                                   contiguous=True)
    assert dict(zip(shuffled, fold_assignment(shuffled, 3, contiguous=True))) != dict(
        zip(SYNTHETIC, fold_assignment(SYNTHETIC, 3, contiguous=True)))


def test_the_seed_changes_the_split_and_is_reproducible():
    a, b = fold_assignment(SYNTHETIC, 2, seed=1), fold_assignment(SYNTHETIC, 2, seed=2)
    assert a != b and a == fold_assignment(SYNTHETIC, 2, seed=1)


@pytest.mark.parametrize("call, match", [
    (lambda: fold_assignment(SYNTHETIC, 1), "num_folds=1: need at least 2 folds"),
    (lambda: fold_assignment(SYNTHETIC[:3], 4), "num_folds=4 is more than the 3 questions"),
    (lambda: fold_indices(SYNTHETIC, 2, 2), r"fold=2 is outside 0\.\.1"),
    (lambda: fold_indices(SYNTHETIC, 2, -1), r"fold=-1 is outside 0\.\.1"),
])
def test_bad_fold_options_are_one_line_errors(call, match):
    with pytest.raises(ITIError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
