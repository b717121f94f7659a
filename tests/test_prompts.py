"""lm_eval_iti.prompts: the probe set and the sigma set built from TruthfulQA v0 against an independent construction
from the raw files (json / csv), the chat format on a real chat template, the task prompt texts, bad input."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import INFORMATIVE_TEXT, shared_data

from lm_eval_iti import data, prompts
from lm_eval_iti.errors import ITIError


@pytest.fixture(scope="module")
def v0():
    folder = shared_data("truthfulqa", "v0")
    return folder, data.load_mc(folder), data.load_generation(folder)


def test_probe_set_is_every_mc2_choice_in_file_order(v0):
    folder, mc, _ = v0
    raw = json.loads((folder / "mc_task.json").read_text(encoding="utf-8"))
    expected = [(f"Q: {row['question'].strip()} A: {answer}", int(label), i)
                for i, row in enumerate(raw) for answer, label in row["mc2_targets"].items()]
    got = prompts.mc_prompt_set(mc)
    assert list(zip(got.prompts, got.labels, got.question_index)) == expected
    assert len(got) == len(expected) > 4000 and got.add_special_tokens and got.info["format"] == "qa"
    assert 0 < sum(got.labels) < len(got)


def test_sigma_set_is_each_answer_then_one_seeded_question_of_the_pool(v0):
    folder, mc, gen = v0
    with open(folder / "TruthfulQA.csv", newline="", encoding="utf-8-sig") as fh:
        raw = list(csv.DictReader(fh))
    questions = [r["question"] for r in mc]
    got = prompts.gen_end_q_prompt_set(mc, gen, seed=42)
    by_question: dict[int, set[str]] = {}
    expected_rows = []
    for row in raw:
        q = row["Question"].strip()
        for column, label in (("Correct Answers", 1), ("Incorrect Answers", 0)):
            for a in (a.strip() for a in row[column].split(";")):
                if a:
                    expected_rows.append((f"Q: {q} A: {a} Q: ", label, questions.index(q)))
    assert len(got) == len(expected_rows)
    for prompt, label, qi, (head, want_label, want_qi) in zip(got.prompts, got.labels, got.question_index,
                                                               expected_rows):
        assert prompt.startswith(head) and (label, qi) == (want_label, want_qi)
        follow_up = prompt[len(head):]
        assert follow_up in questions  # the last token ends a real question
        by_question.setdefault(qi, set()).add(follow_up)
    assert all(len(f) == 1 for f in by_question.values())  # one draw per question, shared by its answers
    assert len({f for fs in by_question.values() for f in fs}) > 300  # drawn, not one constant question
    again, other = prompts.gen_end_q_prompt_set(mc, gen, seed=42), prompts.gen_end_q_prompt_set(mc, gen, seed=1)
    assert again.prompts == got.prompts and other.prompts != got.prompts


def test_sigma_follow_ups_stay_in_the_questions_own_fold(v0):
    _, mc, gen = v0
    groups = [i % 3 for i in range(len(mc))]
    group_of = {r["question"]: g for r, g in zip(mc, groups)}
    got = prompts.gen_end_q_prompt_set(mc, gen, seed=0, groups=groups)
    for prompt, qi in zip(got.prompts, got.question_index):
        follow_up = next(q for q in group_of if prompt.endswith(" Q: " + q))
        assert group_of[follow_up] == groups[qi]
    assert got.info["random_question_pool"] == "same fold"


def test_subset_and_rows_of_questions(v0):
    _, mc, _ = v0
    full = prompts.mc_prompt_set(mc[:5])
    rows = full.rows_of_questions({1, 3})
    assert rows == [i for i, q in enumerate(full.question_index) if q in (1, 3)]
    part = full.subset(rows)
    assert part.prompts == [full.prompts[r] for r in rows] and set(part.question_index) == {1, 3}


def test_chat_format_ends_with_the_answer_inside_the_tokenizers_own_template():
    from transformers import PreTrainedTokenizerFast

    from lm_eval_iti.tiny import build_tokenizer

    tok = build_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert prompts.render("Why?", "Because.", "chat", tok) == "<|user|>Why?<|end|><|assistant|>Because."
    assert (prompts.render("Why?", "Because.", "chat", tok, next_question="How?")
            == "<|user|>Why?<|end|><|assistant|>Because.<|end|><|user|>How?")
    chat = prompts.mc_prompt_set([{"question": "Why?", "mc2_targets": {"choices": ["A.", "B."], "labels": [1, 0]}}],
                                 "chat", tok)
    assert chat.prompts == ["<|user|>Why?<|end|><|assistant|>A.", "<|user|>Why?<|end|><|assistant|>B."]
    assert not chat.add_special_tokens  # the template carries its own special tokens
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"  # drops the content
    with pytest.raises(ITIError, match="drops message content"):
        prompts.render("Why?", "Because.", "chat", tok)
    tok.chat_template = None
    with pytest.raises(ITIError, match="needs a tokenizer with a chat template"):
        prompts.render("Why?", "Because.", "chat", tok)


def test_task_prompt_texts():
    """The instruction is the reference's text; the primer is lm-eval's truthfulqa preamble, read from its YAML."""
    from conftest import STOCK_TQA

    assert prompts.INSTRUCTIONS["informative"] == INFORMATIVE_TEXT and prompts.INSTRUCTIONS["none"] == ""
    assert prompts.INSTRUCTIONS["default"].startswith(INFORMATIVE_TEXT[:-1] + "; and reply")
    stock = (STOCK_TQA / "truthfulqa_mc1.yaml").read_text()
    first, last = prompts.QA_PRIMER.splitlines()[0], prompts.QA_PRIMER.splitlines()[-1]
    assert first in stock and last in stock
    assert prompts.mc_prompt("Why?", "informative") == INFORMATIVE_TEXT + "\n\n" + prompts.QA_PRIMER + "\n\nQ: Why?\nA:"
    assert prompts.gen_prompt("Why?", "none", "none") == "Q: Why?"
    assert set(prompts.PRIMERS) == {"qa", "none"}


@pytest.mark.parametrize("call, match", [
    (lambda: prompts.mc_prompt_set([{"question": "q"}]), "question 0 .* missing column 'mc2_targets'"),
    (lambda: prompts.mc_prompt_set([], prompt_format="xml"), "prompt format 'xml' is not one of qa, chat"),
    (lambda: prompts.gen_end_q_prompt_set([{"question": "a"}], [{"question": "b"}]), "shares no question"),
    (lambda: prompts.mc_prompt("q", "friendly"), "instruction='friendly' is not one of default, informative, none"),
    (lambda: prompts.gen_prompt("q", "none", "six"), "primer='six' is not one of qa, none"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(ITIError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
