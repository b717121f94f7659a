"""hf-iti against independent computations: plain hf, a hand-written hook from the file's tensors, spies."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from _reference.iti_hook import (ReferenceHook, reference_generate, reference_loglikelihood,
                                 reference_token_loglikelihood, top_heads_by_rank)
from _reference.iti_hook import reference_vectors as _reference_vectors
from lm_eval_iti.errors import ITIError
from lm_eval_iti.harness.model import HFITI

CONTEXTS = [
    "Q: What is the square root of banana?\nA:",
    "Q: Who was president of the United States in 1955?\nA:",
    "Q: Where were the 1992 Olympics held?\nA:",
    "Q:",
]
CONTINUATIONS = [" I have no comment.", " Dwight D. Eisenhower", " Barcelona, Spain.", " yes", " no", " The"]
REQUESTS = [(c, x) for c in CONTEXTS for x in CONTINUATIONS[: 3 + (len(c) % 3)]]
PROMPTS = ["Q: Where were the 1992 Olympics held?\nA:", "Q: Who?", "Q: How does a telescope work? Telescopes use\nA:"]


def lm(cls, model_dir, batch_size=8, **kw):
    return cls(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=batch_size, **kw)


def ll(model, requests=REQUESTS):
    return [r[0] for r in model.loglikelihood([Instance("loglikelihood", None, r, i) for i, r in enumerate(requests)],
                                               disable_tqdm=True)]


def gen(model, prompts=PROMPTS, max_gen_toks=12):
    reqs = [Instance("generate_until", None, (p, {"until": ["Q:"], "max_gen_toks": max_gen_toks}), i)
            for i, p in enumerate(prompts)]
    return model.generate_until(reqs, disable_tqdm=True)


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return lm(HFLM, tiny_model_dir)


@pytest.fixture(scope="module")
def steered_answer(tiny_model_dir, tiny_directions_file):
    return lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file))


# ---- an independent reference (tests/_reference): its own pre-hook from the file's raw tensors, batch 1 ----

def reference_vectors(path, alpha, keep=None):
    return _reference_vectors(path, alpha, num_heads=4, head_dim=16, keep=keep)  # tiny Llama: 4 heads x head_dim 16


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval(), AutoTokenizer.from_pretrained(str(tiny_model_dir))


# ---- tests ----

def test_alpha_zero_is_bit_identical_to_hf(tiny_model_dir, tiny_directions_file, base):
    zero = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), alpha=0)
    assert ll(zero) == ll(base)
    assert gen(zero) == gen(base)
    text = ["Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light."]
    roll = [Instance("loglikelihood_rolling", None, (t,), 0) for t in text]
    assert zero.loglikelihood_rolling(roll, disable_tqdm=True) == base.loglikelihood_rolling(roll, disable_tqdm=True)


@pytest.mark.parametrize("mode", ["answer", "all", "legacy"])
def test_loglikelihood_matches_an_independent_hook(tiny_model_dir, tiny_directions_file, plain, mode, base):
    model = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), mc_positions=mode)
    ours = ll(model)
    expected = reference_loglikelihood(*plain, REQUESTS, reference_vectors(tiny_directions_file, 3.0), mode)
    assert ours == pytest.approx(expected, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(ours, ll(base))) > 1e-3, "the shift must change the scores"


def test_rolling_loglikelihood_edits_every_position(tiny_model_dir, tiny_directions_file, plain):
    model = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file))
    text = "Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light."
    ours = model.loglikelihood_rolling([Instance("loglikelihood_rolling", None, (text,), 0)], disable_tqdm=True)[0]
    hf_model, tok = plain
    expected = reference_loglikelihood(hf_model, tok, [(tok.decode([model.prefix_token_id]), text)],
                                       reference_vectors(tiny_directions_file, 3.0), "all")[0]
    assert ours == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("mode", ["last", "generated", "all"])
def test_generation_matches_an_independent_hook(tiny_model_dir, tiny_directions_file, plain, mode):
    model = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), gen_positions=mode, batch_size=4, alpha=4)
    ours = gen(model)
    vectors = reference_vectors(tiny_directions_file, 4.0)
    expected = [reference_generate(*plain, p, vectors, mode) for p in PROMPTS]
    assert ours == expected


GENERATION_SETTINGS = {  # transformers generate() settings whose forwards differ from "one prompt forward, then steps"
    "default": {},
    "prefill_chunk_size": {"prefill_chunk_size": 2},  # the prompt in several forwards
    "static cache": {"cache_implementation": "static"},
    "chunked static cache": {"cache_implementation": "static", "prefill_chunk_size": 3},
}


@pytest.mark.parametrize("setting", sorted(GENERATION_SETTINGS))
@pytest.mark.parametrize("mode", ["last", "generated", "all"])
def test_generation_logits_match_an_independent_hook_per_step(tiny_model_dir, tiny_directions_file, plain, mode,
                                                              setting):
    """Left-padded batched KV-cache decoding vs full recomputation, logits compared at every step, for every
    supported way transformers feeds the prompt (whole, in chunks, into a static cache)."""
    model = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), gen_positions=mode, alpha=6)
    ids, mask = model.tok_batch_encode(PROMPTS, padding_side="left")
    steps = 6
    out = model._model_generate(ids, max_length=ids.shape[1] + steps, stop=[], attention_mask=mask, do_sample=False,
                                output_logits=True, return_dict_in_generate=True, **GENERATION_SETTINGS[setting])
    hf_model, tok = plain
    hook = ReferenceHook(hf_model, reference_vectors(tiny_directions_file, 6.0))
    try:
        for row, prompt in enumerate(PROMPTS):
            prompt_ids = tok(prompt, add_special_tokens=False).input_ids
            p = len(prompt_ids)
            generated = out.sequences[row, ids.shape[1]:].tolist()
            for step in range(len(out.logits)):
                seq = prompt_ids + generated[:step]
                hook.positions = "all" if mode == "all" else set(range(p - 1 if mode == "last" else p, len(seq)))
                with torch.no_grad():
                    expected = hf_model(torch.tensor([seq])).logits[0, -1]
                assert torch.allclose(out.logits[step][row], expected, atol=1e-4), (row, step)
    finally:
        hook.remove()


def test_generation_modes_differ(tiny_model_dir, tiny_directions_file, base):
    outs = {m: gen(lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), alpha=8, gen_positions=m))
            for m in ("last", "generated", "all")}
    assert len({tuple(v) for v in outs.values()} | {tuple(gen(base))}) >= 3


def test_answer_mode_leaves_logits_before_the_last_context_token_identical(steered_answer, base, plain):
    _, tok = plain
    ctx, cont = REQUESTS[0]
    c = len(tok(ctx, add_special_tokens=False).input_ids)
    captured = {}

    def spy(name):
        def hook(module, args, output):
            captured[name] = output.detach().clone()
        return hook

    for name, model in (("hf", base), ("iti", steered_answer)):
        handle = model.model.lm_head.register_forward_hook(spy(name))
        ll(model, [(ctx, cont)])
        handle.remove()
    hf, iti = captured["hf"][0], captured["iti"][0]
    assert torch.equal(hf[: c - 1], iti[: c - 1])
    assert not torch.allclose(hf[c - 1], iti[c - 1])


def _edit_spy(model, layer):
    """Records, per forward of one o_proj, which positions the ITI hook changed."""
    proj = model.model.model.layers[layer].self_attn.o_proj
    record, before = [], {}
    h1 = proj.register_forward_pre_hook(lambda m, a: before.__setitem__("x", a[0].clone()), prepend=True)
    h2 = proj.register_forward_pre_hook(
        lambda m, a: record.append((a[0] != before["x"]).any(-1).tolist()))
    return record, (h1, h2)


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_gen_last_edits_the_last_prompt_position_and_each_generated_token(steered_answer, prompt_len):
    layer = next(iter(steered_answer.intervener.vectors))
    record, handles = _edit_spy(steered_answer, layer)
    context = torch.randint(5, 200, (2, prompt_len))
    try:
        out = steered_answer._model_generate(context, max_length=prompt_len + 4, stop=["never-stop"],
                                             do_sample=False)
    finally:
        for h in handles:
            h.remove()
    steps = out.shape[1] - prompt_len
    assert len(record) == steps >= 2
    assert record[0] == [[False] * (prompt_len - 1) + [True]] * 2  # prefill: last prompt position only
    assert all(r == [[True], [True]] for r in record[1:])  # each decode step: the new token


def test_gen_generated_leaves_the_prompt_forward_untouched(tiny_model_dir, tiny_directions_file):
    model = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), gen_positions="generated")
    record, handles = _edit_spy(model, next(iter(model.intervener.vectors)))
    try:
        model._model_generate(torch.randint(5, 200, (1, 1)), max_length=4, stop=["never"], do_sample=False)
    finally:
        for h in handles:
            h.remove()
    assert record[0] == [[False]] and all(r == [[True]] for r in record[1:])


def test_batch_size_and_logits_cache_do_not_change_scores(tiny_model_dir, tiny_directions_file, steered_answer):
    reference = ll(steered_answer)
    one = ll(lm(HFITI, tiny_model_dir, batch_size=1, directions=str(tiny_directions_file)))
    nocache = ll(lm(HFITI, tiny_model_dir, batch_size=3, logits_cache=False, directions=str(tiny_directions_file)))
    assert one == pytest.approx(reference, abs=1e-5)
    assert nocache == pytest.approx(reference, abs=1e-5)


def test_generation_batch_one_equals_batched_left_padding(tiny_model_dir, tiny_directions_file):
    batched = gen(lm(HFITI, tiny_model_dir, batch_size=4, directions=str(tiny_directions_file)))
    single = gen(lm(HFITI, tiny_model_dir, batch_size=1, directions=str(tiny_directions_file)))
    assert batched == single


def test_same_input_with_different_splits_gets_each_its_own_positions(steered_answer, plain, tiny_directions_file):
    # ctx+cont[:-1] identical, split differently: identical model rows that need different edits
    tokens = list(range(20, 32))
    requests = [(("a", "b"), tokens[:6], tokens[6:]), (("c", "d"), tokens[:9], tokens[9:])]
    ours = [r[0] for r in steered_answer._loglikelihood_tokens(requests, disable_tqdm=True)]
    expected = reference_token_loglikelihood(plain[0], requests, reference_vectors(tiny_directions_file, 3.0))
    assert ours == pytest.approx(expected, abs=1e-5)


def test_batch_size_probing_calls_are_not_edited(steered_answer):
    seen = []
    proj = steered_answer.model.model.layers[next(iter(steered_answer.intervener.vectors))].self_attn.o_proj
    handle = proj.register_forward_pre_hook(lambda m, a: seen.append(steered_answer.intervener.current_plan()))
    try:
        steered_answer._model_call(torch.ones(2, 7, dtype=torch.long))
    finally:
        handle.remove()
    assert seen == [None]


def test_heads_option_uses_the_top_k_by_rank(tiny_model_dir, tiny_directions_file, plain):
    """WHICH heads: the first 2 rows of the file's own head_rank tensor, and the scores are those of a hook that
    shifts exactly those heads by the file's sigma and direction."""
    top2 = top_heads_by_rank(tiny_directions_file, 2)
    every = top_heads_by_rank(tiny_directions_file, 4)
    assert len(top2) == 2 and len(every) == 4  # 2 of 4: keeping the wrong 2 would be seen
    model = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), num_heads=2, mc_positions="all")
    assert set(model.directions.selected_heads()) == top2
    info = model.get_model_info()["iti"]
    assert info["num_heads_used"] == 2 and {tuple(p) for p in info["heads_used"]} == top2
    expected = reference_loglikelihood(*plain, REQUESTS, reference_vectors(tiny_directions_file, 3.0, keep=top2), "all")
    assert ll(model) == pytest.approx(expected, abs=2e-5)
    wrong = reference_loglikelihood(*plain, REQUESTS, reference_vectors(tiny_directions_file, 3.0,
                                                                        keep=every - top2), "all")
    assert max(abs(a - b) for a, b in zip(ll(model), wrong)) > 1e-3  # the check can tell the heads apart


def test_results_record_provenance(steered_answer, tiny_directions_file):
    import hashlib

    info = steered_answer.get_model_info()["iti"]
    assert info["directions_sha256"] == hashlib.sha256(tiny_directions_file.read_bytes()).hexdigest()
    assert info["alpha"] == 3.0 and info["mc_positions"] == "answer" and info["gen_positions"] == "last"


@pytest.mark.parametrize("kwargs, message", [
    ({"directions": "/nonexistent.safetensors"}, "not found"),
    ({"mc_positions": "middle"}, "mc_positions='middle' is not one of answer, all, legacy"),
    ({"gen_positions": "prompt"}, "gen_positions='prompt'"),
    ({"alpha": "strong"}, "alpha='strong' is not a number"),
    ({"num_heads": "0"}, "num_heads='0' must be a positive"),
    ({"heads": "0"}, "heads='0' must be a positive"),  # the deprecated spelling
    ({"heads": "2", "num_heads": "3"}, "give num_heads= only"),
    ({"directions": None}, "hf-iti needs directions"),
])
def test_bad_options_fail_before_loading(tiny_model_dir, tiny_directions_file, kwargs, message):
    args = {"directions": str(tiny_directions_file), **kwargs}
    with pytest.raises(ITIError, match=message):
        HFITI(pretrained="/model/never/loaded", device="cpu", **args)


# ---- token id 0 as a real token, misses, and generation modes ----

@pytest.fixture(scope="module")
def bang_zero_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with a word-level vocabulary whose id 0 is the real token "!" (as in GPT-2, Llama-3, Qwen)."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("bang_zero")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, folder / name)
    words = ["!", "<s>", "</s>", "<unk>", "Q:", "A:", "the", "sky", "is", "blue", "green", "very", "yes", "no", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")
    fast.save_pretrained(str(folder))
    assert fast.convert_tokens_to_ids("!") == 0
    return folder


def test_a_real_token_id_0_does_not_borrow_another_requests_span(bang_zero_dir, tiny_directions_file):
    """A: input ctx+[blue], B: input ctx+[blue, !] with 3 answer tokens; once right-padded with zeros the rows are
    alike. Each must get its own answer positions (checked against an independent hook at batch size 1)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requests = [("Q: the sky is", " blue ."), ("Q: the sky is", " blue ! yes"), ("Q: the sky is", " blue ! !"),
                ("Q: the sky", " is blue"), ("Q: the sky is", " green")]
    tok = AutoTokenizer.from_pretrained(str(bang_zero_dir))
    assert tok(" blue ! yes", add_special_tokens=False).input_ids[1] == 0
    model = lm(HFITI, bang_zero_dir, directions=str(tiny_directions_file))
    ours = ll(model, requests)
    plain_model = AutoModelForCausalLM.from_pretrained(str(bang_zero_dir)).eval()
    expected = reference_loglikelihood(plain_model, tok, requests, reference_vectors(tiny_directions_file, 3.0),
                                       "answer")
    assert ours == pytest.approx(expected, abs=1e-5)


def test_rows_that_differ_only_in_trailing_zeros_go_to_separate_rounds(steered_answer, plain, tiny_directions_file):
    ctx = [20, 21, 22]
    requests = [(("a", "b"), ctx, [5, 7]), (("c", "d"), ctx, [5, 0, 9]), (("e", "f"), ctx, [5, 0, 0, 9])]
    calls = []
    original = HFLM._loglikelihood_tokens

    def spy(self, reqs, **kw):
        calls.append(len(reqs))
        return original(self, reqs, **kw)

    HFLM._loglikelihood_tokens = spy
    try:
        ours = [r[0] for r in steered_answer._loglikelihood_tokens(requests, disable_tqdm=True)]
    finally:
        HFLM._loglikelihood_tokens = original
    assert calls == [1, 1, 1]
    expected = reference_token_loglikelihood(plain[0], requests, reference_vectors(tiny_directions_file, 3.0))
    assert ours == pytest.approx(expected, abs=1e-5)


def test_a_row_missing_from_the_lookup_raises_instead_of_scoring_unedited(steered_answer):
    known = [20, 21, 22]
    from lm_eval_iti.harness.model import _key

    steered_answer._answer_lengths = {_key(known): (_key(known), 3, 1)}
    try:
        steered_answer._model_call(torch.tensor([known + [0]]))  # a known row, padded: edited, no error
        with pytest.raises(ITIError, match="matches none of lm-eval's requests"):
            steered_answer._model_call(torch.tensor([known + [0], [20, 21, 23, 24]]))
    finally:
        steered_answer._answer_lengths = None


def test_auto_batch_size_probing_inside_a_round_still_passes_through(tiny_model_dir, tiny_directions_file,
                                                                     steered_answer):
    auto = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), batch_size="auto", max_batch_size=4)
    assert ll(auto) == pytest.approx(ll(steered_answer), abs=1e-5)


def test_compiled_decoding_is_never_used_while_steering(steered_answer, monkeypatch):
    """A static cache makes transformers compile the decode forward (on GPU; forced here with _compile_all_devices):
    the hooks' per-forward state would be frozen into the graph, so hf-iti decodes eagerly."""
    from transformers import CompileConfig

    compiled = []
    model = steered_answer.model
    monkeypatch.setattr(model, "get_compiled_call", lambda *a, **k: compiled.append(1) or model.__call__)
    config = CompileConfig()
    config._compile_all_devices = True
    context = torch.randint(5, 200, (2, 4))
    steered_answer._model_generate(context, max_length=8, stop=[], do_sample=False, cache_implementation="static",
                                   compile_config=config)
    assert compiled == []
    HFLM._model_generate(steered_answer, context, max_length=8, stop=[], do_sample=False,
                         cache_implementation="static", compile_config=config)
    assert compiled, "the spy must see compilation when hf-iti does not prevent it"


@pytest.mark.parametrize("kwargs, mode", [
    ({"prompt_lookup_num_tokens": 2}, "assisted_generation"),
    ({"assistant_model": "tiny"}, "assisted_generation"),
    ({"penalty_alpha": 0.6, "top_k": 4}, "contrastive_search"),
    ({"custom_generate": "some/repo"}, "custom_generate"),
])
def test_generation_modes_that_verify_candidates_are_refused(steered_answer, tiny_model_dir, kwargs, mode):
    if kwargs.get("assistant_model") == "tiny":
        from transformers import AutoModelForCausalLM

        kwargs = {"assistant_model": AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()}
    calls = []
    handle = steered_answer.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(ITIError, match=f"cannot steer {mode}"):
            steered_answer._model_generate(torch.randint(5, 200, (1, 4)), max_length=8, stop=[], do_sample=False,
                                           **kwargs)
    finally:
        handle.remove()
    assert calls == []  # refused before any forward


def test_prompt_lookup_through_generate_until_is_one_error(steered_answer):
    reqs = [Instance("generate_until", None, (PROMPTS[0], {"until": ["Q:"], "max_gen_toks": 4,
                                                            "prompt_lookup_num_tokens": 2}), 0)]
    with pytest.raises(ITIError, match="cannot steer assisted_generation"):
        steered_answer.generate_until(reqs, disable_tqdm=True)


def test_beam_search_edits_the_last_prompt_position_then_every_step(steered_answer):
    layer = next(iter(steered_answer.intervener.vectors))
    record, handles = _edit_spy(steered_answer, layer)
    try:
        steered_answer._model_generate(torch.randint(5, 200, (2, 5)), max_length=9, stop=["never-stop"],
                                       do_sample=False, num_beams=2)
    finally:
        for h in handles:
            h.remove()
    assert len(record) >= 2
    assert record[0] == [[False] * 4 + [True]] * 4  # 2 rows x 2 beams: the last prompt position only
    assert all(all(all(row) for row in step) for step in record[1:])


# ---- HFITI from Python objects: a loaded model, its tokenizer and an in-memory Directions ----

def _per_doc_loglikelihoods(out) -> dict[int, list[float]]:
    return {row["doc_id"]: [float(r[0][0]) for r in row["resps"]] for row in out["samples"]["plugin_mc"]}


def test_hfiti_from_objects_scores_as_hfiti_from_the_saved_file(tiny_model_dir, tiny_directions_file, mc_task, base):
    import lm_eval
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import load_directions

    run = dict(tasks=[str(mc_task)], log_samples=True, bootstrap_iters=0)
    from_file = lm(HFITI, tiny_model_dir, directions=str(tiny_directions_file), batch_size=4)
    expected = lm_eval.simple_evaluate(model=from_file, **run)

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    directions = load_directions(tiny_directions_file)  # in memory from here: the object, not the path, is given
    from_objects = HFITI(pretrained=model, tokenizer=tokenizer, directions=directions, batch_size=4)
    try:
        got = lm_eval.simple_evaluate(model=from_objects, **run)
        info = from_objects.get_model_info()["iti"]
    finally:
        from_objects.intervener.remove()
    ours, theirs = _per_doc_loglikelihoods(got), _per_doc_loglikelihoods(expected)
    assert ours.keys() == theirs.keys() and len(ours) == 8
    for doc_id in ours:
        assert ours[doc_id] == pytest.approx(theirs[doc_id], abs=1e-5)
    unsteered = lm_eval.simple_evaluate(model=base, **run)
    assert max(abs(a - b) for d in ours for a, b in zip(ours[d], _per_doc_loglikelihoods(unsteered)[d])) > 1e-4
    # provenance: the same heads and alpha; no file, so no path and no sha256, and it says so
    file_info = from_file.get_model_info()["iti"]
    assert info["heads_used"] == file_info["heads_used"] and info["alpha"] == file_info["alpha"] == 3.0
    assert info["directions"] is None and info["directions_sha256"] is None
    assert info["directions_source"].startswith("in-memory") and file_info["directions_source"] == "file"


def test_hfiti_checks_a_directions_object_against_the_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.tiny import build_model, random_directions

    other = random_directions(build_model("llama", hidden=48, layers=2, heads=3, vocab_size=512), 2)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with pytest.raises(ITIError, match="num_heads"):
        HFITI(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)), directions=other)
    assert not any(m._forward_pre_hooks for m in model.modules())  # nothing was installed
