"""Adapters: every listed architecture resolves its out-projection, and a shift there acts on real heads."""

from __future__ import annotations

import pytest
import torch

from lm_eval_iti.architectures import ADAPTERS, model_shape, out_projections, project_shift
from lm_eval_iti.errors import ITIError
from lm_eval_iti.intervene import ALL, Intervener
from lm_eval_iti.tiny import build_model, random_directions

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2", "gpt2", "gpt_neox", "opt"]


def test_every_listed_architecture_has_an_adapter():
    assert set(ARCHS) == set(ADAPTERS)


@pytest.mark.parametrize("arch", ARCHS)
def test_out_projection_input_is_the_concatenated_heads(arch):
    model = build_model(arch, seed=0, hidden=32, layers=2, heads=4, vocab_size=64)
    shape = model_shape(model)
    assert (shape.num_layers, shape.num_heads, shape.head_dim) == (2, 4, 8)
    seen = []
    handle = out_projections(model)[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    ids = torch.randint(3, 64, (2, 5))
    with torch.no_grad():
        base = model(ids).logits
    handle.remove()
    assert seen == [torch.Size([2, 5, 32])]

    directions = random_directions(model, num_heads=3, seed=0, alpha=4.0)
    iv = Intervener(model, directions, 4.0).install()
    with torch.no_grad(), iv.editing(ALL):
        steered = model(ids).logits
    iv.remove()
    assert not torch.allclose(base, steered)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base), "hooks must be removable"


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_project_shift_is_the_linear_part_of_the_projection(arch):
    model = build_model(arch, seed=0, hidden=32, layers=1, heads=4, vocab_size=64)
    proj = out_projections(model)[0]
    x, delta = torch.randn(3, 32), torch.randn(32)
    with torch.no_grad():
        expected = proj(x + delta) - proj(x)
    assert torch.allclose(project_shift(proj, delta).expand(3, -1), expected, atol=1e-5)


def test_unknown_architecture_says_how_to_add_it():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=1, n_head=4, vocab_size=64))
    with pytest.raises(ITIError, match=r"BloomForCausalLM.*'bloom'.*architectures.py"):
        model_shape(model)
