"""The intervention: position plans and answer masks on tensors; on a tiny model, quantized (integer) projection
weights, one intervener per model, and absolute positions during generation."""

from __future__ import annotations

import pytest
import torch
from conftest import quantized_tiny_llama

from lm_eval_iti.errors import ITIError
from lm_eval_iti.intervene import ALL, LAST, FromColumn, Intervener, add_at_positions, answer_mask
from lm_eval_iti.tiny import build_model, random_directions


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


def test_from_column_plan_edits_that_column_and_every_later_one():
    x = torch.randn(2, 5, 6)
    v = torch.randn(6)
    out = add_at_positions(x, v, FromColumn(3))
    assert torch.equal(out[:, :3], x[:, :3]) and torch.equal(out[:, 3:], x[:, 3:] + v)
    assert torch.equal(add_at_positions(x, v, FromColumn(4)), add_at_positions(x, v, LAST))


def _edits_seen(model, intervener, x_ids):
    """The o_proj input change per layer that the installed intervener made, seen by a hook registered after it."""
    seen = {}
    for layer in intervener.vectors:
        proj = model.model.layers[layer].self_attn.o_proj
        before = {}
        proj.register_forward_pre_hook(lambda m, a, before=before: before.__setitem__("x", a[0].clone()),
                                       prepend=True)
        proj.register_forward_pre_hook(lambda m, a, layer=layer, before=before:
                                       seen.__setitem__(layer, a[0] - before["x"]))
    with intervener.editing(ALL), torch.no_grad():
        model(x_ids)
    return seen


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_integer_projection_weights_get_the_float32_shift_unchanged(dtype):
    model = quantized_tiny_llama(dtype)
    directions = random_directions(model, num_heads=4, seed=2, alpha=3.0)
    expected = directions.shift_vectors(3.0)
    assert any((v.abs() > 1).any() and (v < 0).any() for v in expected.values())  # what an integer cast would break
    intervener = Intervener(model, directions, 3.0).install()
    try:
        seen = _edits_seen(model, intervener, torch.randint(4, 500, (2, 6)))
    finally:
        intervener.remove()
    assert seen.keys() == expected.keys()
    for layer, delta in seen.items():
        assert delta.dtype == torch.float32
        assert torch.allclose(delta, expected[layer].expand_as(delta), atol=1e-6), layer


def test_bfloat16_activations_get_the_shift_cast_at_the_add():
    model = build_model("llama", seed=0, dtype=torch.bfloat16)
    directions = random_directions(model, num_heads=4, seed=2, alpha=3.0)
    intervener = Intervener(model, directions, 3.0).install()
    try:
        assert all(v.dtype == torch.float32 for v in intervener.vectors.values())
        seen = _edits_seen(model, intervener, torch.randint(4, 500, (1, 4)))
    finally:
        intervener.remove()
    for layer, delta in seen.items():
        assert delta.dtype == torch.bfloat16
        # x + v in bf16: within one bf16 rounding of the float32 shift
        assert torch.allclose(delta.float(), directions.shift_vectors(3.0)[layer].expand_as(delta), rtol=0.02,
                              atol=0.05)


def test_a_second_intervener_on_the_same_model_raises():
    model = build_model("llama", seed=0)
    first = Intervener(model, random_directions(model, 4, seed=1, alpha=2.0), 2.0).install()
    second = Intervener(model, random_directions(model, 4, seed=2, alpha=2.0), 2.0)
    hooks_before = sum(len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(ITIError, match="already has an ITI intervention installed"):
        second.install()
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks_before  # nothing half-installed
    assert first.install() is first  # installing the same one again is a no-op
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == hooks_before
    first.remove()
    second.install()  # after removal the model is free again
    second.remove()
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_a_second_hf_iti_on_a_prebuilt_model_raises(tiny_model_dir, tiny_directions_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.harness.model import HFITI

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    common = dict(pretrained=model, tokenizer=tokenizer, directions=str(tiny_directions_file), batch_size=2)
    first = HFITI(**common)
    with pytest.raises(ITIError, match="already has an ITI intervention installed"):
        HFITI(**common, alpha=5)
    first.intervener.remove()
    HFITI(**common, alpha=5).intervener.remove()


def test_a_forward_of_several_tokens_after_the_prompt_raises():
    """What assisted / prompt-lookup decoding does (verify candidates in one forward): positions cannot be placed."""
    model = build_model("llama", seed=0)
    intervener = Intervener(model, random_directions(model, 4, seed=1, alpha=2.0), 2.0).install()
    try:
        with torch.no_grad(), intervener.generation("last", prompt_length=3):
            model(torch.randint(4, 500, (1, 3)))
            model(torch.randint(4, 500, (1, 1)))
            with pytest.raises(ITIError, match="fed 3 tokens at once at position 4 of a 3-token prompt"):
                model(torch.randint(4, 500, (1, 3)))
        with torch.no_grad(), intervener.generation("last", prompt_length=3):
            with pytest.raises(ITIError, match="fed 4 tokens at once at position 0"):
                model(torch.randint(4, 500, (1, 4)))  # prompt and a candidate in one forward
    finally:
        intervener.remove()
