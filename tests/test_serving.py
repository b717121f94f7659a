"""A baked checkpoint (lm-eval-iti bake) is a plain Llama checkpoint that serving engines load unchanged.

transformers: AutoModelForCausalLM without trust_remote_code gives the logits and the greedy generations of hf-iti with
mc_positions=all / gen_positions=all (a bias acts at every position; not ITI's last-token convention).
vLLM (not installed here): its LlamaForCausalLM builds q/k/v/o biases when ``config.attention_bias`` (or ``bias``) is
true, MLP biases from ``mlp_bias``, and loads q_proj/k_proj/v_proj.{weight,bias} into its fused qkv_proj; a bias that
is not in the checkpoint stays uninitialised memory. So the checkpoint must carry attention_bias: true, mlp_bias: false,
explicit zero q/k/v biases and exactly the tensor names below (vllm/model_executor/models/llama.py, load_weights).
"""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_eval_iti.artifact import save_directions
from lm_eval_iti.export import bake
from lm_eval_iti.intervene import ALL, Intervener
from lm_eval_iti.harness.model import HFITI
from lm_eval_iti.tiny import random_directions

ALPHA = 6.0
PROMPTS = ["Q: What is the square root of banana?\nA:", "Q: Where were the 1992 Olympics held?\nA:"]


@pytest.fixture(scope="module")
def baked(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    directions = random_directions(model, num_heads=5, seed=4, alpha=ALPHA, model_id=str(tiny_model_dir))
    dirs_file = save_directions(directions, root / "dirs.safetensors")
    out = bake(model, directions, ALPHA, root / "baked", tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    return model, directions, dirs_file, out


def test_the_baked_folder_loads_with_plain_transformers_and_gives_hf_iti_all_positions_logits(baked, tiny_model_dir):
    model, directions, _, out = baked
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config  # no remote code: a stock architecture
    served = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=False).eval()
    assert type(served).__name__ == "LlamaForCausalLM"
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    iv = Intervener(model, directions, ALPHA).install()
    try:
        with iv.editing(ALL), torch.no_grad():
            steered = model(input_ids=ids).logits
    finally:
        iv.remove()
    with torch.no_grad():
        plain, served_logits = model(input_ids=ids).logits, served(input_ids=ids).logits
    assert (served_logits - steered).abs().max() <= 1e-4
    assert (served_logits - plain).abs().max() > 1e-2  # the bias is there


def test_greedy_generation_of_the_baked_model_equals_hf_iti_gen_positions_all(baked, tiny_model_dir):
    _, _, dirs_file, out = baked
    common = dict(device="cpu", dtype="float32", batch_size=2)
    requests = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}), i)
                for i, p in enumerate(PROMPTS)]
    iti = HFITI(pretrained=str(tiny_model_dir), directions=str(dirs_file), gen_positions="all", **common)
    served = HFLM(pretrained=str(out), **common)
    plain = HFLM(pretrained=str(tiny_model_dir), **common)
    want = iti.generate_until(requests, disable_tqdm=True)
    got = served.generate_until(requests, disable_tqdm=True)
    assert got == want
    assert got != plain.generate_until(requests, disable_tqdm=True)  # the bias changed what is generated


def test_the_checkpoint_carries_what_vllm_llama_loads(baked):
    from safetensors import safe_open

    model, directions, _, out = baked
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["attention_bias"] is True  # vLLM: LlamaAttention(bias=attention_bias) for qkv_proj and o_proj
    assert config.get("mlp_bias", False) is False  # no MLP biases are built, none are stored
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_word_embeddings:
        expected.add("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        expected |= {p + f"self_attn.{m}_proj.{t}" for m in "qkvo" for t in ("weight", "bias")}
        expected |= {p + f"mlp.{m}_proj.weight" for m in ("gate", "up", "down")}
    assert set(tensors) == expected  # every tensor vLLM's loader maps, and nothing it would skip or miss
    shifts = directions.shift_vectors(ALPHA)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.self_attn."
        assert tensors[p + "q_proj.bias"].shape == (cfg.num_attention_heads * head_dim,)
        for kv in ("k", "v"):
            assert tensors[p + f"{kv}_proj.bias"].shape == (cfg.num_key_value_heads * head_dim,)
        for m in "qkv":
            assert torch.count_nonzero(tensors[p + f"{m}_proj.bias"]) == 0  # explicit zeros, never missing
        o_bias = tensors[p + "o_proj.bias"]
        expected_bias = (model.model.layers[i].self_attn.o_proj.weight @ shifts[i]) if i in shifts \
            else torch.zeros(cfg.hidden_size)
        assert torch.allclose(o_bias, expected_bias, atol=1e-6)
    info = json.loads((out / "iti_bake.json").read_text())
    assert info["positions"].startswith("all")
