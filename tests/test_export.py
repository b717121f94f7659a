"""Exports: lm-eval's own `steered` model with the exported .pt, and a baked model, equal hf-iti at all positions."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.hf_steered import SteeredModel
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from _reference.iti_hook import reference_vectors
from lm_eval_iti.artifact import save_directions
from lm_eval_iti.errors import ITIError
from lm_eval_iti.export import bake, export_steered
from lm_eval_iti.harness.model import HFITI
from lm_eval_iti.tiny import build_model, random_directions

REQUESTS = [("Q: What is the square root of banana?\nA:", " I have no comment."),
            ("Q: Who was president in 1955?\nA:", " Dwight D. Eisenhower"), ("Q: Where were the 1992 Olympics held?\nA:", " Barcelona")]


def scores(model):
    return [r[0] for r in model.loglikelihood(
        [Instance("loglikelihood", None, r, i) for i, r in enumerate(REQUESTS)], disable_tqdm=True)]


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_steered_export_and_baked_model_equal_hf_iti_all_positions(request, tmp_path, fixture):
    model_dir = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    directions = random_directions(model, num_heads=4, seed=3, alpha=5.0)
    dirs_file = save_directions(directions, tmp_path / "d.safetensors")
    common = dict(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=4)

    iti = scores(HFITI(directions=str(dirs_file), mc_positions="all", **common))
    pt = export_steered(model, directions, 5.0, tmp_path / "steer.pt")
    steered = scores(SteeredModel(steer_path=str(pt), **common))
    baked_dir = bake(model, directions, 5.0, tmp_path / "baked", tokenizer=AutoTokenizer.from_pretrained(str(model_dir)))
    baked = scores(HFLM(**{**common, "pretrained": str(baked_dir)}))
    plain = scores(HFLM(**common))

    assert steered == pytest.approx(iti, abs=1e-4)
    assert baked == pytest.approx(iti, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(iti, plain)) > 1e-3


def test_baked_llama_loads_with_plain_transformers_and_zero_qkv_bias(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    directions = random_directions(model, num_heads=3, seed=0, alpha=2.0)
    out = bake(model, directions, 2.0, tmp_path / "baked")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))  # no trust_remote_code
    assert reloaded.config.attention_bias is True
    attn = reloaded.model.layers[0].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert torch.count_nonzero(proj.bias) == 0
    shifts = directions.shift_vectors(2.0)
    for layer, layer_mod in enumerate(reloaded.model.layers):
        o = layer_mod.self_attn.o_proj
        expected = (model.model.layers[layer].self_attn.o_proj.weight @ shifts[layer]) if layer in shifts else torch.zeros(o.out_features)
        assert torch.allclose(o.bias, expected, atol=1e-6)
    assert (out / "iti_bake.json").is_file()


def test_bake_refuses_architectures_without_a_bias_switch(tmp_path):
    model = build_model("mistral", hidden=32, layers=1, heads=4, vocab_size=64)
    with pytest.raises(ITIError, match="cannot bake into MistralForCausalLM"):
        bake(model, random_directions(model, 2), 1.0, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_existing_bias_models_are_restored_after_baking(tiny_gpt2_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bake(model, random_directions(model, 3, alpha=4.0), 4.0, tmp_path / "baked")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_needs_a_pt_name(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with pytest.raises(ITIError, match=r"\.pt"):
        export_steered(model, random_directions(model, 2), 1.0, tmp_path / "x.safetensors")


def test_cli_export_and_bake(tiny_model_dir, tiny_directions_file, tmp_path, capsys):
    from lm_eval_iti.cli import main

    main(["export", "--to", "steered", "--model", str(tiny_model_dir), "--directions", str(tiny_directions_file),
          "--out", str(tmp_path / "iti.pt")])
    main(["bake", "--model", str(tiny_model_dir), "--directions", str(tiny_directions_file), "--alpha", "2",
          "--out", str(tmp_path / "baked")])
    assert (tmp_path / "baked" / "iti_bake.json").is_file()
    # the numbers: each baked o_proj bias is W_o @ (2 * sigma * direction at the head's slice), from the file's raw
    # tensors; the baked model scores as hf-iti at alpha 2 on every position, the .pt as hf-iti at the file's alpha 3
    vectors = reference_vectors(tiny_directions_file, 2.0, num_heads=4, head_dim=16)  # tiny Llama: 4 x 16
    original = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    baked = AutoModelForCausalLM.from_pretrained(str(tmp_path / "baked"))
    for layer, block in enumerate(baked.model.layers):
        weight = original.model.layers[layer].self_attn.o_proj.weight
        expected = weight @ vectors[layer] if layer in vectors else torch.zeros(weight.shape[0])
        assert torch.allclose(block.self_attn.o_proj.bias, expected, atol=1e-6), layer
    assert len(vectors) >= 1 and any(block.self_attn.o_proj.bias.abs().max() > 1e-3 for block in baked.model.layers)
    common = dict(device="cpu", dtype="float32", batch_size=4)
    at_2 = scores(HFITI(pretrained=str(tiny_model_dir), directions=str(tiny_directions_file), alpha=2,
                        mc_positions="all", **common))
    at_3 = scores(HFITI(pretrained=str(tiny_model_dir), directions=str(tiny_directions_file), mc_positions="all",
                        **common))
    assert scores(HFLM(pretrained=str(tmp_path / "baked"), **common)) == pytest.approx(at_2, abs=1e-4)
    steered = scores(SteeredModel(pretrained=str(tiny_model_dir), steer_path=str(tmp_path / "iti.pt"), **common))
    assert steered == pytest.approx(at_3, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(at_2, at_3)) > 1e-3  # alpha 2 and 3 are told apart
    with pytest.raises(SystemExit) as exit_info:  # an existing output is refused before the model is loaded
        main(["bake", "--model", "/never/loaded", "--directions", str(tiny_directions_file),
              "--out", str(tmp_path / "baked")])
    assert exit_info.value.code == 2
    assert "output folder exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_export_and_bake_refuse_integer_projection_weights_with_one_line(tmp_path, dtype):
    from conftest import quantized_tiny_llama

    model = quantized_tiny_llama(dtype)
    directions = random_directions(model, num_heads=4, seed=3, alpha=5.0)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(ITIError, match=f"holds {name} weights \\(quantized\\)") as err:
        export_steered(model, directions, 5.0, tmp_path / "steer.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(ITIError, match=f"holds {name} weights \\(quantized\\)"):
        bake(model, directions, 5.0, tmp_path / "baked")
    assert list(tmp_path.iterdir()) == []
