"""Pure pieces of the intervention: position plans and answer masks, on tensors without a model."""

from __future__ import annotations

import torch

from lm_eval_iti.intervene import ALL, LAST, add_at_positions, answer_mask


def test_add_all_last_and_mask():
    x = torch.randn(2, 5, 6)
    v = torch.randn(6)
    assert torch.equal(add_at_positions(x, v, None), x)
    assert torch.equal(add_at_positions(x, v, ALL), x + v)
    last = add_at_positions(x, v, LAST)
    assert torch.equal(last[:, :-1], x[:, :-1]) and torch.equal(last[:, -1], x[:, -1] + v)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1], mask[1, 3:] = True, True
    out = add_at_positions(x, v, mask)
    for b in range(2):
        for t in range(5):
            expected = x[b, t] + v if mask[b, t] else x[b, t]
            assert torch.equal(out[b, t], expected)


def test_vector_is_cast_to_the_activation_dtype():
    x = torch.randn(1, 3, 4, dtype=torch.bfloat16)
    out = add_at_positions(x, torch.ones(4), ALL)
    assert out.dtype == torch.bfloat16 and torch.equal(out, x + torch.ones(4, dtype=torch.bfloat16))


def test_answer_mask_marks_the_positions_that_score_the_continuation():
    # request 1: context 4 tokens, continuation 3 -> input length 6, scored logits at 3, 4, 5
    # request 2: context 2, continuation 1 -> input length 2, scored logit at 1
    mask = answer_mask([6, 2], [3, 1], width=7)
    assert mask[0].nonzero().flatten().tolist() == [3, 4, 5]
    assert mask[1].nonzero().flatten().tolist() == [1]
    assert mask.sum(1).tolist() == [3, 1]


def test_answer_mask_clips_at_the_left_edge_after_truncation():
    assert answer_mask([3], [5], width=3)[0].tolist() == [True, True, True]
