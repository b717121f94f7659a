"""Sharded / offloaded models (accelerate device_map): same activations, directions, interventions and loglikelihoods
as a plain load; placement options parse to accelerate's arguments or fail in one line."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_data
from safetensors import safe_open

from lm_eval_iti.errors import ITIError
from lm_eval_iti.loading import execution_device, load_model, parse_device_map, parse_max_memory, placement_kwargs

LAYERS = 3
# layer 0 and the embeddings stay in memory on the CPU; layers 1 and 2 live on disk and are moved in by accelerate's
# AlignDevicesHook at each forward (their parameters sit on the meta device in between)
OFFLOAD_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
               "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
PROMPTS = ["Q: What is the square root of banana? A: I have no comment.", "Q: Where were the 1992 Olympics held?",
           "The quick brown fox", "Q: Who was president of the United States in 1955? A: Dwight D. Eisenhower."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lm_eval_iti.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny3"), "llama", seed=3, layers=LAYERS)


@pytest.fixture(scope="module")
def plain(model_dir):
    return load_model(str(model_dir), dtype="float32", device="cpu", progress=False)


@pytest.fixture(scope="module")
def offloaded(model_dir, tmp_path_factory):
    model, tok = load_model(str(model_dir), dtype="float32", progress=False, device_map=OFFLOAD_MAP,
                            offload_folder=tmp_path_factory.mktemp("offload"))
    return model, tok


def test_the_offloaded_model_really_is_offloaded(offloaded):
    model, _ = offloaded
    assert model.hf_device_map == OFFLOAD_MAP
    assert model.model.layers[1].self_attn.o_proj.weight.device.type == "meta"  # on disk, not in memory
    assert model.model.layers[0].self_attn.o_proj.weight.device.type == "cpu"
    assert execution_device(model) == torch.device("cpu")


def test_offloaded_activations_equal_a_plain_load(plain, offloaded):
    from lm_eval_iti.collect import collect_activations, last_token_activations, tokenize_prompts

    tokens = tokenize_prompts(plain[1], PROMPTS)
    a = last_token_activations(plain[0], tokens, pad_id=0)
    b = last_token_activations(offloaded[0], tokens, pad_id=0)
    assert a.dtype == b.dtype == torch.float32 and a.device.type == b.device.type == "cpu"
    assert a.shape == b.shape and a.abs().max() > 0
    assert (a - b).abs().max() <= 1e-6
    ca = collect_activations(plain[0], plain[1], PROMPTS, use_cache=False, batch_size=3, progress=False)
    cb = collect_activations(offloaded[0], offloaded[1], PROMPTS, use_cache=False, batch_size=3, progress=False)
    assert (ca.float() - cb.float()).abs().max() <= 1e-6


def test_intervention_on_offloaded_layers_equals_a_plain_load(plain, offloaded):
    from lm_eval_iti.intervene import ALL, Intervener
    from lm_eval_iti.tiny import random_directions

    directions = random_directions(plain[0], num_heads=6, seed=2, alpha=4.0)
    assert {1, 2} & set(directions.heads)  # some intervened layers are on disk
    ids = torch.tensor(plain[1](PROMPTS[:1])["input_ids"])
    logits = {}
    for name, (model, _) in (("plain", plain), ("offloaded", offloaded)):
        with torch.no_grad():
            base = model(input_ids=ids).logits
        iv = Intervener(model, directions, 4.0).install()
        try:
            with iv.editing(ALL), torch.no_grad():
                logits[name] = model(input_ids=ids).logits
        finally:
            iv.remove()
        assert (logits[name] - base).abs().max() > 1e-3  # the shift changed the output
    assert (logits["plain"] - logits["offloaded"]).abs().max() <= 1e-5


def _tensors_and_metadata(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


def test_offloaded_fit_writes_the_same_directions_file(model_dir, tmp_path):
    from lm_eval_iti.fit import fit_and_save

    v0 = shared_data("truthfulqa", "v0")
    common = dict(data_dir=v0, num_heads=4, num_questions=12, sigma_data="mc", use_cache=False, progress=False,
                  write_plot=False, batch_size=8, dtype="float32")
    fit_and_save(str(model_dir), tmp_path / "plain.safetensors", device="cpu", **common)
    fit_and_save(str(model_dir), tmp_path / "offloaded.safetensors", device_map=OFFLOAD_MAP,
                   offload_folder=tmp_path / "offload", **common)
    plain_t, plain_m = _tensors_and_metadata(tmp_path / "plain.safetensors")
    off_t, off_m = _tensors_and_metadata(tmp_path / "offloaded.safetensors")
    assert plain_t.keys() == off_t.keys()
    for key in plain_t:
        assert plain_t[key].dtype == off_t[key].dtype
        assert (plain_t[key].double() - off_t[key].double()).abs().max() <= 1e-6, key
    assert plain_m == off_m


def test_export_and_bake_read_offloaded_weights(plain, offloaded, tmp_path):
    from lm_eval_iti.export import bake, projected_shifts
    from lm_eval_iti.tiny import random_directions

    directions = random_directions(plain[0], num_heads=6, seed=2, alpha=4.0)
    a, b = projected_shifts(plain[0], directions, 4.0), projected_shifts(offloaded[0], directions, 4.0)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bake(plain[0], directions, 4.0, tmp_path / "plain")
    bake(offloaded[0], directions, 4.0, tmp_path / "offloaded")
    from safetensors.torch import load_file

    sa, sb = load_file(str(tmp_path / "plain" / "model.safetensors")), load_file(str(tmp_path / "offloaded" / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("how", ["device_map", "max_cpu_memory"])
def test_hf_iti_parallelize_with_offloading_gives_the_same_loglikelihoods(model_dir, tmp_path, how):
    """HFLM's parallelize=True path (accelerate's from_pretrained placement) on CPU with disk offload: device='cpu'
    must be given (HFLM's default is cuda), and the placement comes either from an explicit device_map dict (Python)
    or from device_map auto under max_cpu_memory (what --model_args can express)."""
    from lm_eval.api.instance import Instance

    from lm_eval_iti.artifact import save_directions
    from lm_eval_iti.harness.model import HFITI
    from lm_eval_iti.tiny import random_directions

    plain_model, _ = load_model(str(model_dir), dtype="float32", device="cpu", progress=False)
    directions = tmp_path / "dirs.safetensors"
    save_directions(random_directions(plain_model, num_heads=6, seed=2, alpha=4.0, model_id=str(model_dir)), directions)
    requests = [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in
                enumerate([("Q: What is the square root of banana? A:", " I have no comment."),
                           ("Q: Where were the 1992 Olympics held? A:", " Barcelona, Spain."),
                           ("The quick brown", " fox jumps")])]
    common = dict(pretrained=str(model_dir), directions=str(directions), device="cpu", dtype="float32",
                  batch_size=2, mc_positions="all")
    placement = ({"device_map": OFFLOAD_MAP} if how == "device_map" else {"max_cpu_memory": "150KB"})
    sharded = HFITI(parallelize=True, offload_folder=str(tmp_path / "offload"), **placement, **common)
    assert "disk" in sharded.model.hf_device_map.values()
    assert any(p.device.type == "meta" for p in sharded.model.parameters())  # really offloaded
    steered_sharded = [ll for ll, _ in sharded.loglikelihood(requests, disable_tqdm=True)]
    reference = HFITI(**common)
    steered = [ll for ll, _ in reference.loglikelihood(requests, disable_tqdm=True)]
    unsteered = [ll for ll, _ in HFITI(alpha=0, **common).loglikelihood(requests, disable_tqdm=True)]
    assert steered_sharded == pytest.approx(steered, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(steered, unsteered)) > 1e-3  # the intervention is in the comparison


# placement options ---------------------------------------------------------------------------------------------------
def test_placement_options_parse_to_accelerate_arguments(tmp_path):
    assert parse_device_map("auto") == "auto" and parse_device_map("0") == 0
    assert parse_device_map('{"model.layers.0": 0, "lm_head": "cpu"}') == {"model.layers.0": 0, "lm_head": "cpu"}
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory("cuda:0=1GB") == {0: "1GB"}
    assert placement_kwargs() == {}
    kwargs = placement_kwargs("auto", "0=1GiB,cpu=2GiB", tmp_path)
    assert kwargs == {"device_map": "auto", "max_memory": {0: "1GiB", "cpu": "2GiB"}, "offload_folder": str(tmp_path)}


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_memory="0=1GiB"), "need device_map="),
    (dict(offload_folder="x"), "need device_map="),
    (dict(device_map="auto", device="cpu"), "pass one of them"),
    (dict(device_map="auto", max_memory="0=lots"), "max_memory="),
    (dict(device_map="auto", max_memory="gpu0=1GiB"), "not a GPU index"),
    (dict(device_map="auto", max_memory="1GiB"), "DEVICE=SIZE"),
    (dict(device_map='{"lm_head": '), "not valid JSON"),
    (dict(device_map='{"lm_head": [1]}'), "module names to devices"),
    (dict(device_map={"": "disk"}), "offload_folder="),
])
def test_bad_placement_is_one_itierror(model_dir, kwargs, needle):
    with pytest.raises(ITIError, match=needle.replace("(", r"\(")):
        load_model(str(model_dir), progress=False, **kwargs)


def test_every_model_loading_command_takes_the_placement_flags():
    from click.testing import CliRunner

    from lm_eval_iti.cli import cli

    for name in ("fit-directions", "validate", "sweep", "side-effects", "export", "bake", "demo"):
        out = CliRunner().invoke(cli, [name, "--help"]).output
        for flag in ("--device-map", "--max-memory", "--offload-folder"):
            assert flag in out, (name, flag)
