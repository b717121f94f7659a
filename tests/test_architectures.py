"""Adapters: every listed architecture resolves its out-projection, and a shift there acts on real heads."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from _reference.iti_hook import reference_generate, reference_loglikelihood, reference_vectors
from conftest import tiny_arch_with_directions
from lm_eval_iti import prefix_scoring as ps
from lm_eval_iti.architectures import ADAPTERS, model_shape, out_projections, project_shift
from lm_eval_iti.artifact import save_directions
from lm_eval_iti.errors import ITIError
from lm_eval_iti.harness.model import HFITI
from lm_eval_iti.intervene import ALL, Intervener
from lm_eval_iti.tiny import build_model, random_directions

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3", "phi3", "olmo2", "gpt2",
         "gpt_neox", "opt"]


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


# ---- Gemma 3 (tiny random configs): sliding-window layers with an 8-token window, crossed by every request ----

GEMMA3 = ["gemma3_text", "gemma3"]  # the text-only causal LM and the multimodal wrapper's language model
PRIMER = ("Interpret each question literally, and as a question about the real world.\n\n"
          "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\n")
G3_REQUESTS = [(PRIMER + "Q: What is the square root of banana?\nA:", " I have no comment."),
               (PRIMER + "Q: What is the square root of banana?\nA:", " Banana."),
               (PRIMER + "Q: Who was president of the United States in 1955?\nA:", " Dwight D. Eisenhower."),
               ("Q: How does a telescope work?\nA:", " Telescopes use lenses or mirrors to focus light.")]
G3_PROMPTS = [PRIMER + "Q: How does a telescope work?\nA:", "Q: Who?"]
G3_SETTINGS = [(0.0, None), (6.0, 2), (12.0, 6)]


class _TextView:
    """The multimodal Gemma 3 seen as the reference hook expects: ``.model.layers`` is its language model's."""

    def __init__(self, model):
        self._model, self.model = model, model.model.language_model

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)


@pytest.fixture(scope="module", params=GEMMA3)
def gemma3(request, tmp_path_factory):
    """(model, tokenizer, directions path, Directions, folder): tiny Gemma 3, hidden 64, 2 layers (sliding, full),
    4 query heads and 2 KV heads of 16 dims, a sliding window of 8 tokens, 6 random heads at alpha 3."""
    return tiny_arch_with_directions(tmp_path_factory, request.param, "g3")


def _hflm(cls, folder, **kw):
    return cls(pretrained=str(folder), device="cpu", dtype="float32", batch_size=kw.pop("batch_size", 1), **kw)


def test_gemma3_requests_cross_the_sliding_window_and_the_window_changes_the_logits(gemma3):
    model, tok, *_ = gemma3
    text_config = model.config.get_text_config()
    assert text_config.sliding_window == 8 and text_config.layer_types == ["sliding_attention", "full_attention"]
    ids = tok(G3_REQUESTS[0][0] + G3_REQUESTS[0][1], add_special_tokens=False, return_tensors="pt").input_ids
    assert ids.shape[1] > 3 * 8
    with torch.no_grad():
        windowed = model(ids).logits
        text_config.sliding_window = 4096
        try:
            full = model(ids).logits
        finally:
            text_config.sliding_window = 8
    assert torch.allclose(windowed[:, :8], full[:, :8], atol=1e-5)  # inside the window: the same attention
    assert not torch.allclose(windowed[:, 8:], full[:, 8:], atol=1e-3)  # beyond it: the window matters


@pytest.mark.parametrize("mode", ["answer", "all", "legacy"])
def test_gemma3_loglikelihood_equals_an_independent_pre_hook(gemma3, mode):
    model, tok, path, _, folder = gemma3
    view = model if model.config.model_type == "gemma3_text" else _TextView(model)
    vectors = reference_vectors(path, 3.0, num_heads=4, head_dim=16)
    expected = reference_loglikelihood(view, tok, G3_REQUESTS, vectors, mode)
    steered = _hflm(HFITI, folder, directions=str(path), mc_positions=mode)
    got = [r[0] for r in steered.loglikelihood([Instance("loglikelihood", None, r, i)
                                                for i, r in enumerate(G3_REQUESTS)], disable_tqdm=True)]
    assert got == pytest.approx(expected, abs=1e-5, rel=0)
    assert max(abs(a - b) for a, b in zip(got, reference_loglikelihood(view, tok, G3_REQUESTS, {}, mode))) > 1e-3


@pytest.mark.parametrize("mode", ["last", "generated", "all"])
def test_gemma3_generation_equals_an_independent_pre_hook(gemma3, mode):
    model, tok, path, _, folder = gemma3
    view = model if model.config.model_type == "gemma3_text" else _TextView(model)
    vectors = reference_vectors(path, 1.0, num_heads=4, head_dim=16)  # alpha 1: each mode decodes differently
    expected = [reference_generate(view, tok, p, vectors, mode, max_new=12) for p in G3_PROMPTS]
    steered = _hflm(HFITI, folder, directions=str(path), gen_positions=mode, alpha=1)
    reqs = [Instance("generate_until", None, (p, {"until": ["Q:"], "max_gen_toks": 12, "do_sample": False}), i)
            for i, p in enumerate(G3_PROMPTS)]
    assert steered.generate_until(reqs, disable_tqdm=True) == expected
    assert expected != [reference_generate(view, tok, p, {}, mode, max_new=12) for p in G3_PROMPTS]


@pytest.mark.parametrize("max_length", [2048, 20])
@pytest.mark.parametrize("mode", ["answer", "legacy", "all"])
def test_gemma3_engine_equals_hf_iti_across_the_sliding_window(gemma3, mode, max_length):
    """The sweep engine's prefix caches keep every key of the sliding layers and the model's own sliding mask hides
    the old ones, so it is exact; max_length 20 also left-truncates the long requests."""
    model, tok, path, directions, _ = gemma3
    encoder = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=max_length)
    pairs = [encoder._encode_pair(c, x) for c, x in G3_REQUESTS]
    assert max(len(c) + len(x) for c, x in pairs) > 3 * 8
    stats = {}
    engine = ps.score(model, pairs, ps.make_points(directions, G3_SETTINGS), max_length=max_length,
                      mc_positions=mode, stats=stats)
    assert (stats["truncated"] > 0) == (max_length == 20)
    for (alpha, k), got in zip(G3_SETTINGS, engine):
        lm = HFITI(pretrained=model, tokenizer=tok, directions=str(path), alpha=alpha, num_heads=k, mc_positions=mode,
                   batch_size=4, max_length=max_length)
        try:
            expected = lm._loglikelihood_tokens([(("", ""), c, x) for c, x in pairs], disable_tqdm=True)
        finally:
            lm.intervener.remove()
        assert max(abs(a[0] - b[0]) for a, b in zip(got, expected)) <= 1e-4, (alpha, k)
        assert [a[1] for a in got] == [b[1] for b in expected]
    assert max(abs(a[0] - b[0]) for a, b in zip(engine[0], engine[2])) > 1e-3


def test_gemma3_steered_export_and_bake_equal_hf_iti_all_positions(gemma3, tmp_path):
    from lm_eval.models.hf_steered import SteeredModel

    from lm_eval_iti.export import bake, export_steered

    model, tok, path, directions, folder = gemma3

    def scores(lm):
        return [r[0] for r in lm.loglikelihood([Instance("loglikelihood", None, r, i)
                                                for i, r in enumerate(G3_REQUESTS)], disable_tqdm=True)]

    iti = scores(_hflm(HFITI, folder, directions=str(path), mc_positions="all", batch_size=4))
    steered = scores(_hflm(SteeredModel, folder, steer_path=str(export_steered(model, directions, 3.0,
                                                                                 tmp_path / "s.pt")), batch_size=4))
    assert steered == pytest.approx(iti, abs=1e-4, rel=0)
    assert max(abs(a - b) for a, b in zip(iti, scores(_hflm(HFLM, folder, batch_size=4)))) > 1e-3
    if model.config.model_type == "gemma3":  # the bias switch is in config.text_config: one line, nothing written
        with pytest.raises(ITIError, match=r"cannot bake into Gemma3ForConditionalGeneration.*steered"):
            bake(model, directions, 3.0, tmp_path / "baked", tokenizer=tok)
        assert not (tmp_path / "baked").exists()
        return
    baked = scores(_hflm(HFLM, bake(model, directions, 3.0, tmp_path / "baked", tokenizer=tok), batch_size=4))
    assert baked == pytest.approx(iti, abs=1e-4, rel=0)


def test_gemma3_fit_on_a_few_questions_gives_directions_hf_iti_loads(gemma3, tmp_path):
    from conftest import tqa_v0
    from lm_eval_iti import fit_directions

    model, tok, *_ = gemma3
    fitted = fit_directions(model, tok, data_dir=str(tqa_v0()), num_questions=12, num_heads=3, sigma_data="mc",
                            progress=False, cache_dir=str(tmp_path / "cache"))
    assert fitted.num_selected == 3 and fitted.metadata["architecture"] == type(model).__name__
    path = save_directions(fitted, tmp_path / "fit.safetensors")
    lm = HFITI(pretrained=model, tokenizer=tok, directions=str(path), batch_size=2)
    try:
        assert sorted(lm.intervener.vectors) == sorted({int(layer) for layer in fitted.heads})
    finally:
        lm.intervener.remove()


def test_gemma3_with_soft_capping_hf_iti_and_the_engine_equal_the_independent_hook(tmp_path):
    """Soft-capped attention scores (eager attention) and final logits, as Gemma 2 has them: both act away from the
    o_proj input, so hf-iti, the engine and the reference hook still agree."""
    from lm_eval_iti.tiny import build_tokenizer, tiny_config
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    config = tiny_config("gemma3_text", vocab_size=len(tok), attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    directions = random_directions(model, num_heads=6, seed=1, alpha=3.0)
    path = save_directions(directions, tmp_path / "d.safetensors")
    expected = reference_loglikelihood(model, tok, G3_REQUESTS, reference_vectors(path, 3.0, 4, 16), "answer")
    lm = HFITI(pretrained=model, tokenizer=tok, directions=str(path), batch_size=1)
    try:
        got = [r[0] for r in lm.loglikelihood([Instance("loglikelihood", None, r, i)
                                               for i, r in enumerate(G3_REQUESTS)], disable_tqdm=True)]
        pairs = [lm._encode_pair(c, x) for c, x in G3_REQUESTS]
    finally:
        lm.intervener.remove()
    assert got == pytest.approx(expected, abs=1e-5, rel=0)
    engine = ps.score(model, pairs, ps.make_points(directions, [(3.0, None)]), max_length=2048)[0]
    assert max(abs(e[0] - g) for e, g in zip(engine, got)) <= 1e-4
    with torch.no_grad():  # the caps are on: logits within +-3
        assert float(model(torch.tensor([pairs[0][0]])).logits.abs().max()) <= 3.0
