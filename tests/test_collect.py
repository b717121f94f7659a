"""Activation collection: batched == one-by-one == an independent hook; the cache; resume after a kill; wrong cache."""

from __future__ import annotations

import shutil

import pytest
import torch
from _reference.activations import reference_activation

from lm_eval_iti import collect
from lm_eval_iti.collect import CollectStats, collect_activations, model_identity
from lm_eval_iti.errors import ITIError
from lm_eval_iti.tiny import build_model, build_tokenizer

PROMPTS = [f"Q: {q} A: {a}" for q, a in [
    ("What is the square root of banana?", "I have no comment."),
    ("Where were the 1992 Olympics held?", "Barcelona."),
    ("Who was president of the United States in 1955?", "Dwight D. Eisenhower was president in 1955."),
    ("How does a telescope work?", "Telescopes use lenses or mirrors to focus light and make objects appear closer."),
    ("Which party did he belong to?", "Republican."),
    ("What happens if you eat watermelon seeds?", "Nothing happens."),
    ("Is it true?", "yes"),
]] * 3


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return build_model("llama", seed=0, vocab_size=len(tok))


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_batched_equals_one_by_one_and_an_independent_hook(tok, model_type):
    model = build_model(model_type, seed=1, vocab_size=len(tok))
    batched = collect_activations(model, tok, PROMPTS[:7], batch_size=4, use_cache=False, progress=False)
    single = collect_activations(model, tok, PROMPTS[:7], batch_size=1, use_cache=False, progress=False)
    assert batched.dtype == torch.float16 and batched.shape[0] == 7
    assert torch.allclose(batched.float(), single.float(), atol=2e-3, rtol=1e-2)
    for i in range(7):
        ref = reference_activation(model, tok, PROMPTS[i]).half()
        assert torch.allclose(batched[i].float(), ref.float(), atol=2e-3, rtol=1e-2), i


def test_second_call_reads_the_cache_with_no_forward_pass(tmp_path, tok, llama):
    first, second = CollectStats(), CollectStats()
    a = collect_activations(llama, tok, PROMPTS, batch_size=4, chunk_size=8, cache_dir=tmp_path, progress=False,
                            stats=first)
    b = collect_activations(llama, tok, PROMPTS, batch_size=4, chunk_size=8, cache_dir=tmp_path, progress=False,
                            stats=second)
    assert first.forward_passes > 0 and first.chunks_computed == 3
    assert second.forward_passes == 0 and second.chunks_cached == 3
    assert torch.equal(a, b)
    # another prompt set or dtype is another cache entry
    other = CollectStats()
    collect_activations(llama, tok, PROMPTS[:5], cache_dir=tmp_path, progress=False, stats=other)
    assert other.forward_passes > 0 and other.cache_path != first.cache_path


def test_rows_collect_only_those_prompts_unless_the_whole_set_is_cached_or_asked_for(tmp_path, tok, llama):
    rows = [1, 4, 5, 9, 16]
    full = collect_activations(llama, tok, PROMPTS, batch_size=4, use_cache=False, progress=False)
    only = CollectStats()
    sub = collect_activations(llama, tok, PROMPTS, rows=rows, batch_size=4, cache_dir=tmp_path, progress=False,
                              stats=only)
    assert only.prompts_forwarded == len(rows) and only.forward_passes == 2
    assert torch.allclose(sub.float(), full[rows].float(), atol=2e-3, rtol=1e-2)
    # the subset is its own cache entry (another prompt set), read back on a second call
    again = CollectStats()
    assert torch.equal(collect_activations(llama, tok, PROMPTS, rows=rows, cache_dir=tmp_path, progress=False,
                                           stats=again), sub)
    assert again.forward_passes == 0 and again.cache_path == only.cache_path
    # collect_all collects and caches every prompt, and returns the rows asked for
    whole = CollectStats()
    picked = collect_activations(llama, tok, PROMPTS, rows=rows, collect_all=True, batch_size=4, cache_dir=tmp_path,
                                 progress=False, stats=whole)
    assert whole.prompts_forwarded == len(PROMPTS) and whole.cache_path != only.cache_path
    # ... after which any subset is read from that complete entry
    other = CollectStats()
    read = collect_activations(llama, tok, PROMPTS, rows=[0, 2, 3], cache_dir=tmp_path, progress=False, stats=other)
    assert other.forward_passes == 0 and other.cache_path == whole.cache_path
    everything = collect_activations(llama, tok, PROMPTS, cache_dir=tmp_path, progress=False)
    assert torch.equal(read, everything[[0, 2, 3]]) and torch.equal(picked, everything[rows])


def test_killed_collection_resumes_and_gives_identical_activations(tmp_path, tok, llama, monkeypatch):
    fresh = collect_activations(llama, tok, PROMPTS, batch_size=4, chunk_size=5, cache_dir=tmp_path / "fresh",
                                progress=False)
    written = []
    original = collect.ActivationCache.write_chunk

    def dying_write(self, i, acts):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while working on the third chunk
        original(self, i, acts)
        written.append(i)

    monkeypatch.setattr(collect.ActivationCache, "write_chunk", dying_write)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(llama, tok, PROMPTS, batch_size=4, chunk_size=5, cache_dir=tmp_path / "run",
                            progress=False)
    monkeypatch.setattr(collect.ActivationCache, "write_chunk", original)
    entry = next((tmp_path / "run" / "activations").iterdir())
    assert sorted(p.name for p in entry.glob("chunk_*.safetensors")) == ["chunk_00000.safetensors", "chunk_00001.safetensors"]
    (entry / ".chunk_00002.safetensors.abc.safetensors.tmp").write_bytes(b"half-written")  # debris of a kill mid-write
    stats = CollectStats()
    resumed = collect_activations(llama, tok, PROMPTS, batch_size=4, chunk_size=5, cache_dir=tmp_path / "run",
                                  progress=False, stats=stats)
    assert stats.chunks_cached == 2 and stats.chunks_computed == 3
    assert stats.prompts_forwarded == len(PROMPTS) - 10
    assert torch.equal(resumed, fresh)


def test_a_cache_written_by_another_model_is_refused(tmp_path, tok, llama):
    stats = CollectStats()
    collect_activations(llama, tok, PROMPTS[:6], cache_dir=tmp_path, progress=False, stats=stats)
    other = build_model("llama", seed=9, vocab_size=len(tok))
    other_id = model_identity(other)
    assert other_id != stats.model_identity
    # someone copies model A's cache entry to where model B's would be
    meta_b = collect.cache_meta(other, collect.tokenize_prompts(tok, PROMPTS[:6]), 512, other_id)
    shutil.copytree(stats.cache_path, collect.ActivationCache.entry_path(tmp_path, meta_b))
    probe = CollectStats()
    with pytest.raises(ITIError, match="another model"):
        collect_activations(other, tok, PROMPTS[:6], cache_dir=tmp_path, progress=False, stats=probe)
    assert probe.forward_passes == 0


def test_model_identity_changes_with_the_weights(tok):
    a = build_model("llama", seed=0, vocab_size=len(tok))
    b = build_model("llama", seed=0, vocab_size=len(tok))
    assert model_identity(a) == model_identity(b)
    c = build_model("llama", seed=0, vocab_size=len(tok))
    with torch.no_grad():
        c.lm_head.weight[0, 0] += 1.0
    assert model_identity(c) != model_identity(a)


def test_local_folder_identity_hashes_the_weight_files(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ident = model_identity(model, memo_dir=tmp_path)
    assert "sha256:" in ident and ident == model_identity(model, memo_dir=tmp_path)
    assert (tmp_path / "weight_fingerprints.json").is_file()
