"""The probe stage's streaming mode: probes fitted from the activation cache a block of layers at a time are identical
to the in-memory fit, and no block holds more than the stated bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm_eval_iti.collect import ActivationCache, CachedActivations
from lm_eval_iti.errors import ITIError
from lm_eval_iti.probes import fit_probes, probe_working_bytes

N, L, H, D = 60, 5, 3, 8
CHUNK = 7  # chunks do not line up with anything


def planted(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(N, generator=g) < 0.45).long()
    acts = torch.randn(N, L, H, D, generator=g)
    strength = torch.rand(L, H, generator=g) * 2
    acts[..., 0] += (2 * y - 1)[:, None, None] * strength
    return acts.half(), y.numpy()


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    acts, y = planted()
    meta = {"layout": "1", "model_identity": "test", "tokens_sha256": "x", "dtype": "float32",
            "site": "attn_out_proj_input", "shape": [L, H, D], "num_prompts": N, "chunk_size": CHUNK}
    cache = ActivationCache.open(tmp_path_factory.mktemp("cache"), meta)
    for i in range(cache.num_chunks):
        rows = cache.chunk_rows(i)
        cache.write_chunk(i, acts[rows.start:rows.stop])
    return cache, acts, y


def test_the_streaming_view_reads_the_same_numbers(cached):
    cache, acts, _ = cached
    assert torch.equal(CachedActivations(cache).read_layers(1, 4), acts[:, 1:4])
    rows = [50, 3, 17, 8, 59, 0]
    view = cache.layers(rows)
    assert view.shape == (len(rows), L, H, D)
    assert torch.equal(view.read_layers(0, L), acts[rows])


@pytest.mark.parametrize("max_bytes, block_bytes", [
    (None, None),  # one group of every probe, one block of every layer
    (2 * probe_working_bytes(40, D), 1),  # groups of 2 probes (3 heads a layer: some straddle two layers); blocks of
    # just the layers a group spans
    (3 * probe_working_bytes(40, D), 2 * N * H * D * 2),  # groups of 3 probes, blocks of 2 layers
])
def test_streaming_probes_equal_in_memory_probes(cached, max_bytes, block_bytes):
    cache, acts, y = cached
    rows = list(range(0, N, 2)) + list(range(1, N, 2))  # a reordered subset view, as fit uses
    train, val = list(range(0, 40)), list(range(40, N))
    memory = fit_probes(acts[rows], y[rows], train, val, max_bytes=max_bytes)
    stream = fit_probes(cache.layers(rows), y[rows], train, val, max_bytes=max_bytes, block_bytes=block_bytes)
    assert torch.equal(memory.accuracy, stream.accuracy)
    assert torch.equal(memory.coef, stream.coef)
    assert torch.equal(memory.intercept, stream.intercept)
    assert memory.accuracy.max() > 0.8  # the planted heads were found: the comparison is not between two failures
    assert stream.info["mode"] == "streaming"
    groups = -(-(L * H) // max(1, (max_bytes or 1 << 40) // probe_working_bytes(40, D)))
    assert stream.info["groups"] == groups
    if block_bytes == 1:
        # a group of 2 probes spans at most 2 layers: no block is larger than 2 layers of every row
        assert stream.info["largest_block_bytes"] <= 2 * N * H * D * 2
        assert stream.info["layer_reads"] >= L - 1
    if max_bytes is None:
        assert stream.info["layer_reads"] == 1


def test_a_view_of_an_incomplete_cache_fails_in_one_line(cached, tmp_path):
    cache, acts, _ = cached
    meta = dict(cache.meta, model_identity="other")
    partial = ActivationCache.open(tmp_path, meta)
    partial.write_chunk(0, acts[:CHUNK])
    with pytest.raises(ITIError, match="missing"):
        partial.layers()


def test_fit_probes_rejects_a_source_without_read_layers():
    class Shaped:
        shape = (N, L, H, D)

    with pytest.raises(TypeError, match="read_layers"):
        fit_probes(Shaped(), np.zeros(N), [0, 1], [2])


@pytest.mark.parametrize("folds", [False, True])
def test_a_streaming_fit_writes_the_in_memory_directions_file(tiny_model_dir, tmp_path, folds):
    from conftest import shared_data
    from safetensors import safe_open

    from lm_eval_iti.fit import fit_and_save

    v0 = shared_data("truthfulqa", "v0")
    common = dict(data_dir=v0, num_heads=3, num_questions=12, progress=False, write_plot=False, batch_size=8,
                  chunk_size=10, **(dict(num_folds=2, fold=1) if folds else {}))
    memory = fit_and_save(str(tiny_model_dir), tmp_path / "memory.safetensors", cache_dir=tmp_path / "c1", **common)
    # a fresh cache: the streaming run collects (without assembling the tensor), then reads layers back
    stream = fit_and_save(str(tiny_model_dir), tmp_path / "stream.safetensors", cache_dir=tmp_path / "c2",
                            probe_memory="stream", **common)
    assert stream.forward_passes > 0 and stream.probes.info["mode"] == "streaming"
    files = []
    for name in ("memory", "stream"):
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as fh:
            files.append(({k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()))
    assert files[0][0].keys() == files[1][0].keys()
    assert all(torch.equal(files[0][0][k], files[1][0][k]) for k in files[0][0])
    assert files[0][1] == files[1][1]
    assert torch.equal(memory.probes.coef, stream.probes.coef)


def test_streaming_needs_the_cache_and_the_torch_backend(tiny_model_dir, tmp_path):
    from lm_eval_iti.fit import fit_and_save

    with pytest.raises(ITIError, match="activation cache"):
        fit_and_save(str(tiny_model_dir), tmp_path / "d.safetensors", probe_memory="stream", use_cache=False)
    with pytest.raises(ITIError, match="sklearn"):
        fit_and_save(str(tiny_model_dir), tmp_path / "d.safetensors", probe_memory="stream", probe_backend="sklearn")
    with pytest.raises(ITIError, match="not one of"):
        fit_and_save(str(tiny_model_dir), tmp_path / "d.safetensors", probe_memory="disk")


@pytest.mark.parametrize("stream", [False, True])
def test_non_finite_activations_fail_in_one_line_and_are_never_cached(tmp_path, stream):
    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.tiny import build_model, build_tokenizer

    model, tok = build_model("llama", seed=0), build_tokenizer()
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight.mul_(1e6)  # out-projection inputs beyond fp16's 65504
    with pytest.raises(ITIError, match="NaN/inf"):
        collect_activations(model, tok, ["Q: a? A: b.", "Q: c? A: d."], cache_dir=tmp_path, identity="huge",
                            progress=False, stream=stream)
    assert not list(tmp_path.rglob("chunk_*.safetensors"))
