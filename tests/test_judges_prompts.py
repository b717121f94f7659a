"""The judge prompts are byte-identical to TruthfulQA's judge training data; answer post-processing."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import shared_data

from lm_eval_iti.judges.prompts import (INFO, TRUTH, Item, answer_from_generation, chat_messages, info_prompt,
                                        item_from_doc, truth_prompt)


def _pairs_from_training_file(path, suffix, questions):
    """(question from the CSV, answer, prompt) per row: the question is found in TruthfulQA.csv, not parsed out."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        prompt = json.loads(line)["prompt"]
        candidate = prompt.split("\nA: ", 1)[0][len("Q: "):]
        assert candidate in questions, f"question not in TruthfulQA.csv: {candidate!r}"
        raw_question = questions[candidate]
        head = f"Q: {candidate}\nA: "
        assert prompt.startswith(head) and prompt.endswith("\n" + suffix)
        out.append((raw_question, prompt[len(head):-len("\n" + suffix)], prompt))
    return out


@pytest.fixture(scope="module")
def csv_questions():
    path = shared_data("truthfulqa", "v1", "TruthfulQA.csv")
    with open(path, encoding="utf-8-sig", newline="") as f:
        raw = [row["Question"] for row in csv.DictReader(f)]
    return {q.strip(): q for q in raw}  # stripped -> as written in the CSV (one has a trailing space)


@pytest.mark.parametrize("kind, filename, suffix, build", [
    (TRUTH, "finetune_truth.jsonl", "True:", truth_prompt),
    (INFO, "finetune_info.jsonl", "Helpful:", info_prompt),
])
def test_prompts_byte_identical_to_training_data(csv_questions, kind, filename, suffix, build):
    rows = _pairs_from_training_file(shared_data("truthfulqa", filename), suffix, csv_questions)
    assert len(rows) == 22434
    assert any(q != q.strip() for q, _, _ in rows)  # the CSV's trailing-space question is among them
    assert any(a == "" for _, a, _ in rows) and any("\n" in a for _, a, _ in rows)
    through_glue = 0
    for raw_question, answer, prompt in rows:
        assert build(raw_question.strip(), answer).encode("utf-8") == prompt.encode("utf-8")
        if "Q:" not in answer and "A:" not in answer:
            # the lm-eval path: the doc's question as in the CSV, the raw generation "\nA: <answer>"
            item = item_from_doc({"question": raw_question}, "\nA: " + answer)
            assert build(item.question, item.answer).encode("utf-8") == prompt.encode("utf-8")
            through_glue += 1
    assert through_glue > 0.95 * len(rows)


def test_no_period_is_added():
    assert truth_prompt("Is the sky blue?", "Yes") == "Q: Is the sky blue?\nA: Yes\nTrue:"
    assert info_prompt("Is the sky blue?", "Yes") == "Q: Is the sky blue?\nA: Yes\nHelpful:"


@pytest.mark.parametrize("generation, answer", [
    ("\nA: Paris is the capital.\n\nQ: Next question", "Paris is the capital."),
    ("  A: I have no comment.", "I have no comment."),
    ("Paris.", "Paris."),  # no "A:": the stripped text is the answer
    ("\nA: Plan A: run.", "Plan"),  # the reference splits at every "A:" and keeps the first piece after one
    ("Q: who?\nA: me", ""),  # a generation that starts a new question has no answer
    ("", ""),
])
def test_answer_post_processing_matches_reference(generation, answer):
    # the reference code, verbatim in behaviour: strip; split("Q:")[0].strip(); try split("A:")[1].strip()
    ref = generation.strip().split("Q:")[0].strip()
    try:
        ref = ref.split("A:")[1].strip()
    except IndexError:
        pass
    assert answer_from_generation(generation) == ref == answer


def test_chat_rubric_shows_references_and_answer():
    item = Item("Q?", "An answer", ("right one", "right two"), ("wrong one",))
    for kind in (TRUTH, INFO):
        msgs = chat_messages(kind, item)
        assert [m["role"] for m in msgs] == ["system", "user"]
        user = msgs[1]["content"]
        for text in ("Q?", "An answer", "- right one", "- right two", "- wrong one"):
            assert text in user
        assert "yes or no" in user
    assert chat_messages(TRUTH, item) != chat_messages(INFO, item)


def test_same_answer_cut_as_the_gen_task():
    taskfns = pytest.importorskip("lm_eval_iti.harness.taskfns")
    for text in ("\nA: Paris.\nQ: x", " A: a A: b", "plain", "Q: only", "\nA:  spaced  \n"):
        assert answer_from_generation(text) == taskfns.postprocess_answer(text)
