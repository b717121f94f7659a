"""fit-directions end to end on a tiny Llama and TruthfulQA v0: provenance, folds, cache reuse, sigma, hf-iti, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_data

from lm_eval_iti.artifact import load_directions
from lm_eval_iti.cli import main
from lm_eval_iti.errors import ITIError
from lm_eval_iti.folds import fold_indices, question_id

NQ = 30  # questions used by the end-to-end fits (first 30 of v0)


@pytest.fixture(scope="module")
def v0():
    return shared_data("truthfulqa", "v0")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval(),
            AutoTokenizer.from_pretrained(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def first_fit(tmp_path_factory, tiny_model_dir, v0):
    """Fold 0 of 2, K=3, mass-mean, through the path-loading API; shares its cache with the other tests."""
    from lm_eval_iti.fit import fit_and_save

    root = tmp_path_factory.mktemp("fit")
    result = fit_and_save(str(tiny_model_dir), root / "dirs.safetensors", data_dir=v0, num_heads=3, num_folds=2,
                            fold=0, num_questions=NQ, cache_dir=root / "cache", progress=False, batch_size=32)
    return result, root


def test_output_file_heatmap_and_summary_record_the_fit(first_fit, v0, tiny_model_dir):
    from lm_eval_iti.data import load_mc

    result, root = first_fit
    d = load_directions(root / "dirs.safetensors")
    meta = d.metadata
    questions = [r["question"] for r in load_mc(v0)[:NQ]]
    train, test = fold_indices(questions, 2, 0, 42)
    assert json.loads(meta["train_question_ids"]) == [question_id(questions[i]) for i in train]
    import hashlib

    assert meta["train_question_ids_sha256"] == hashlib.sha256(meta["train_question_ids"].encode()).hexdigest()
    assert not set(json.loads(meta["train_question_ids"])) & {question_id(questions[i]) for i in test}
    for key, value in {"method": "mass-mean", "seed": "42", "num_folds": "2", "fold": "0", "contiguous_folds": "false",
                       "sigma_data": "gen_end_q", "sigma_ddof": "1", "num_heads_selected": "3", "prompt_format": "qa",
                       "val_ratio": "0.2", "model": str(tiny_model_dir)}.items():
        assert meta[key] == value, key
    assert d.alpha == 15.0 and "alpha" not in meta  # a float field; the file's text is read once, on load
    from safetensors import safe_open

    with safe_open(str(root / "dirs.safetensors"), framework="pt") as fh:
        assert fh.metadata()["alpha"] == "15.0"
    assert meta["package_version"] and meta["model_identity"].startswith("LlamaForCausalLM:sha256:")
    assert d.num_selected == 3 and d.probe_accuracy.shape == (2, 4) and d.head_rank.shape == (8, 2)
    assert [tuple(p) for p in d.head_rank[:3].tolist()] == [tuple(p) for p in result.selected.tolist()]
    assert sorted(d.selected_heads()) == sorted(tuple(p) for p in result.selected.tolist())
    assert torch.equal(d.probe_accuracy, result.probes.accuracy)
    png = (root / "dirs.heads.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((root / "dirs.summary.json").read_text())
    assert summary["counts"]["fit_questions"] == len(train) and summary["counts"]["test_questions"] == len(test)
    assert [(r["layer"], r["head"]) for r in summary["top_heads"]] == [tuple(p) for p in result.selected.tolist()]


def test_folds_partition_all_questions_and_match_the_tasks_folds(v0):
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.fit import fit_split

    rows = load_mc(v0)
    questions = [r["question"] for r in rows]
    for num_folds, contiguous in ((2, False), (5, False), (2, True)):
        tests = []
        for fold in range(num_folds):
            fit_q, test_q, train_q, val_q = fit_split(questions, num_folds, fold, 42, contiguous, 0.2)
            assert not set(fit_q) & set(test_q) and set(fit_q) | set(test_q) == set(range(len(questions)))
            assert set(train_q) | set(val_q) == set(fit_q) and not set(train_q) & set(val_q)
            tests.append(set(test_q))
            try:
                from lm_eval_iti.harness.taskfns import TaskOptions, fold_of_questions
            except ImportError:  # the tasks module of the truthfulqa_iti tasks: compare with the shared function
                expected = set(fold_indices(questions, num_folds, fold, 42, contiguous)[1])
            else:
                membership = fold_of_questions(TaskOptions(data_dir=str(v0), num_folds=num_folds, fold=fold,
                                                           contiguous_folds=contiguous), rows)
                expected = {i for i, q in enumerate(questions) if membership[q.strip()] == 1}
            assert set(test_q) == expected
        assert sum(len(t) for t in tests) == len(questions) and set().union(*tests) == set(range(len(questions)))
    shuffled = fit_split(questions, 2, 0, 42)[1]
    assert shuffled != fit_split(questions, 2, 0, 43)[1]  # the seed moves shuffled folds ...
    assert fit_split(questions, 2, 0, 42, True)[1] == fit_split(questions, 2, 0, 43, True)[1]  # ... not contiguous ones


def test_second_fit_with_other_k_method_or_fold_makes_no_forward_pass(first_fit, loaded, v0):
    from lm_eval_iti.fit import fit_and_save

    first, root = first_fit
    assert first.forward_passes > 0
    model, tok = loaded  # an already-loaded model: the same cache entry as the path-loaded fit
    common = dict(tokenizer=tok, data_dir=v0, num_questions=NQ, cache_dir=root / "cache", progress=False,
                  write_plot=False)
    other_k = fit_and_save(model, root / "k2.safetensors", num_heads=2, method="probe", num_folds=2, fold=0, **common)
    assert other_k.forward_passes == 0
    assert torch.equal(other_k.selected, first.selected[:2])
    other_fold = fit_and_save(model, root / "f1.safetensors", num_heads=3, num_folds=2, fold=1, **common)
    assert other_fold.forward_passes > 0  # fold 0's fit collected only its own training prompts
    again = fit_and_save(model, root / "f1b.safetensors", num_heads=2, num_folds=2, fold=1, **common)
    assert again.forward_passes == 0
    assert set(other_fold.train_question_ids) == {question_id(q) for q in
                                                  [r["question"] for r in __import__("lm_eval_iti.data").data.load_mc(v0)[:NQ]]
                                                  } - set(first.train_question_ids)
    sk = fit_and_save(model, root / "sk.safetensors", num_heads=3, num_folds=2, fold=0, probe_backend="sklearn",
                        **common)
    assert sk.forward_passes == 0
    assert float((sk.probes.accuracy - first.probes.accuracy).abs().mean()) <= 0.01


def _needed_rows(v0, fold):
    """(probe rows, sigma rows) of the training questions of ``fold`` of 2, counted independently of fit.py."""
    from lm_eval_iti.data import load_generation, load_mc

    docs = load_mc(v0)[:NQ]
    fit_q = {docs[i]["question"].strip() for i in fold_indices([r["question"] for r in docs], 2, fold, 42)[0]}
    probe = sum(len(d["mc2_targets"]["choices"]) for d in docs if d["question"].strip() in fit_q)
    sigma = sum(1 for g in load_generation(v0) if str(g["question"]).strip() in fit_q
                for a in (g.get("correct_answers") or []) + (g.get("incorrect_answers") or []) if str(a).strip())
    total = sum(len(d["mc2_targets"]["choices"]) for d in docs)
    return probe, sigma, total


def _counting_forwards(model):
    """A pre-hook on the model: (forward calls, rows forwarded) seen during a fit, independently of CollectStats."""
    seen = {"calls": 0, "rows": 0}

    def hook(module, args, kwargs):
        seen["calls"] += 1
        seen["rows"] += int(kwargs["input_ids"].shape[0])

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_a_single_fold_fit_forwards_only_the_prompts_of_its_training_questions(tmp_path, loaded, v0):
    from lm_eval_iti.fit import fit_and_save

    model, tok = loaded
    probe_rows, sigma_rows, total = _needed_rows(v0, 0)
    seen, handle = _counting_forwards(model)
    try:
        result = fit_and_save(model, tmp_path / "d.safetensors", tokenizer=tok, data_dir=v0, num_questions=NQ,
                                num_heads=3, num_folds=2, fold=0, cache_dir=tmp_path / "cache", progress=False,
                                write_plot=False, batch_size=8)
    finally:
        handle.remove()
    probe, sigma = result.collect_stats["probe set"], result.collect_stats["sigma set"]
    assert probe_rows < total  # the held-out fold has prompts that are not collected
    assert probe.prompts_forwarded == probe_rows and sigma.prompts_forwarded == sigma_rows
    assert seen["rows"] == probe_rows + sigma_rows and seen["calls"] == result.forward_passes
    assert result.forward_passes == -(-probe_rows // 8) + -(-sigma_rows // 8)  # one chunk each: ceil(rows / batch)
    c = result.summary["counts"]
    assert (c["probe_rows"], c["sigma_rows"], c["probe_prompts"]) == (probe_rows, sigma_rows, total)
    assert c["sigma_prompts"] > sigma_rows and result.summary["collected"] == "the training fold's prompts only"


def test_collect_all_folds_fills_one_cache_that_the_other_fold_reads_with_the_same_result(tmp_path, loaded, v0):
    from lm_eval_iti.fit import fit_and_save

    model, tok = loaded
    common = dict(tokenizer=tok, data_dir=v0, num_questions=NQ, num_heads=3, num_folds=2, progress=False,
                  write_plot=False, batch_size=8)
    probe_rows, sigma_rows, total = _needed_rows(v0, 1)
    filling = fit_and_save(model, tmp_path / "f0.safetensors", fold=0, cache_dir=tmp_path / "all",
                             collect_all_folds=True, **common)
    assert filling.collect_stats["probe set"].prompts_forwarded == total
    assert filling.summary["collected"].startswith("every fold")
    seen, handle = _counting_forwards(model)
    try:
        reading = fit_and_save(model, tmp_path / "f1.safetensors", fold=1, cache_dir=tmp_path / "all", **common)
    finally:
        handle.remove()
    assert reading.forward_passes == 0 and seen["calls"] == 0
    alone = fit_and_save(model, tmp_path / "f1_alone.safetensors", fold=1, cache_dir=tmp_path / "own", **common)
    assert alone.forward_passes > 0
    assert alone.collect_stats["probe set"].prompts_forwarded == probe_rows
    assert alone.collect_stats["sigma set"].prompts_forwarded == sigma_rows
    assert alone.collect_stats["probe set"].cache_path != reading.collect_stats["probe set"].cache_path
    assert torch.equal(alone.selected, reading.selected)
    for layer in alone.directions.heads:
        assert torch.allclose(alone.directions.directions[layer], reading.directions.directions[layer], atol=1e-3)
        assert torch.allclose(alone.directions.sigma[layer], reading.directions.sigma[layer], rtol=1e-3)


def test_direction_and_sigma_match_an_independent_computation(first_fit, loaded, v0):
    """Recompute mass-mean and sigma from fresh (uncached) activations of the training questions only (and show it matters)."""
    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.data import load_generation, load_mc
    from lm_eval_iti.prompts import gen_end_q_prompt_set, mc_prompt_set

    result, root = first_fit
    model, tok = loaded
    docs = load_mc(v0)[:NQ]
    fit_q = set(fold_indices([r["question"] for r in docs], 2, 0, 42)[0])
    d = load_directions(root / "dirs.safetensors")
    from lm_eval_iti.folds import fold_assignment

    groups = fold_assignment([r["question"] for r in docs], 2, 42)  # follow-up questions from the same fold
    sig_set = gen_end_q_prompt_set(docs, load_generation(v0), seed=42, groups=groups)
    assert all(p.count("Q: ") == 2 for p in sig_set.prompts)
    mc = mc_prompt_set(docs)
    mc_rows = [i for i, q in enumerate(mc.question_index) if q in fit_q]
    sig_rows = [i for i, q in enumerate(sig_set.question_index) if q in fit_q]
    mc_acts = collect_activations(model, tok, [mc.prompts[i] for i in mc_rows], batch_size=64, use_cache=False,
                                  progress=False).double().numpy()
    sig_all = collect_activations(model, tok, sig_set.prompts, batch_size=64, use_cache=False,
                                  progress=False).double().numpy()
    y = np.asarray(mc.labels)[mc_rows].astype(bool)
    for layer, heads in d.heads.items():
        for row, head in enumerate(heads.tolist()):
            x = mc_acts[:, layer, head]
            mm = x[y].mean(0) - x[~y].mean(0)
            mm /= np.linalg.norm(mm)
            assert float(mm @ d.directions[layer][row].double().numpy()) > 0.999
            u = d.directions[layer][row].double().numpy()
            proj_fit = sig_all[sig_rows, layer, head] @ u
            assert float(d.sigma[layer][row]) == pytest.approx(proj_fit.std(ddof=1), rel=1e-3)
            assert proj_fit.std(ddof=1) != pytest.approx((sig_all[:, layer, head] @ u).std(ddof=1), rel=1e-6)


def _loglikelihoods(lm, requests):
    from lm_eval.api.instance import Instance

    instances = [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in enumerate(requests)]
    return [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]


def test_fit_output_loads_in_hf_iti_and_changes_the_scores(first_fit, tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    from lm_eval_iti.harness.model import HFITI

    _, root = first_fit
    requests = [("Q: What is the square root of banana?\nA:", " I have no comment."),
                ("Q: Where were the 1992 Olympics held?\nA:", " Barcelona, Spain.")]
    plain = _loglikelihoods(HFLM(pretrained=str(tiny_model_dir), batch_size=1, device="cpu"), requests)
    steered = _loglikelihoods(HFITI(pretrained=str(tiny_model_dir), directions=str(root / "dirs.safetensors"),
                                    batch_size=1, device="cpu"), requests)
    assert all(abs(a - b) > 1e-4 for a, b in zip(plain, steered)), (plain, steered)
    zero = _loglikelihoods(HFITI(pretrained=str(tiny_model_dir), directions=str(root / "dirs.safetensors"), alpha=0,
                                 batch_size=1, device="cpu"), requests)
    assert zero == plain


def test_prompt_formats():
    from lm_eval_iti.prompts import gen_end_q_prompt_set, render
    from lm_eval_iti.tiny import build_tokenizer

    assert render("Is it?", "Yes.") == "Q: Is it? A: Yes."
    tok = build_tokenizer()
    chat = render("Is it?", "Yes.", "chat", tok)
    assert chat == "<|user|>Is it?\n<|assistant|>Yes."
    follow = render("Is it?", "Yes.", "chat", tok, next_question="Why?")
    assert follow == "<|user|>Is it?\n<|assistant|>Yes.\n<|user|>Why?"
    mc = [{"question": f"q{i}?", "mc2_targets": {"choices": ["a", "b"], "labels": [1, 0]}} for i in range(20)]
    gen = [{"question": f"q{i}?", "correct_answers": ["a", ""], "incorrect_answers": ["b"]} for i in range(20)]
    a, b = gen_end_q_prompt_set(mc, gen, seed=1), gen_end_q_prompt_set(mc, gen, seed=1)
    assert a.prompts == b.prompts and len(a) == 40  # empty answers dropped
    assert a.prompts != gen_end_q_prompt_set(mc, gen, seed=2).prompts


# bad input -----------------------------------------------------------------------------------------------------------
def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err


def _assert_clean_failure(out, code, err, match):
    assert code == 2
    errors = [line for line in err if "error" in line.lower()]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert errors[0].startswith("lm-eval-iti: error:") and match in errors[0], err
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(out.stem)]
    assert leftovers == [], leftovers


def _write_mc(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc_task.json").write_text(json.dumps(rows))
    return folder


@pytest.mark.parametrize("case", ["unknown_model", "missing_column", "k_too_large", "no_false_answers"])
def test_bad_input_is_one_line_and_leaves_no_file(case, tmp_path, tiny_model_dir, v0, capsys):
    out = tmp_path / "out" / "dirs.safetensors"
    out.parent.mkdir()
    args = ["fit-directions", "--model", str(tiny_model_dir), "--out", str(out), "--data-dir", str(v0),
            "--num-questions", "10", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--num-heads", "2"]
    if case == "unknown_model":
        args[2], match = str(tmp_path / "no-such-model"), "no such model folder"
    elif case == "missing_column":
        rows = [{"question": f"q{i}?", "mc1_targets": {"a": 1, "b": 0}} for i in range(10)]
        args[6], match = str(_write_mc(tmp_path / "data", rows)), "missing column 'mc2_targets'"
    elif case == "k_too_large":
        args[-1], match = "9", "larger than layers x heads = 2 x 4 = 8"
    else:
        rows = [{"question": f"q{i}?", "mc1_targets": {"a": 1}, "mc2_targets": {"a": 1, "b": 1}} for i in range(10)]
        args[6] = str(_write_mc(tmp_path / "data", rows))
        args += ["--sigma-data", "mc"]
        match = "'mc2_targets': no false answer"
    code, err = _run_cli(args, capsys)
    _assert_clean_failure(out, code, err, match)


def test_a_cache_written_by_another_model_fails_cleanly(first_fit, tmp_path, v0, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti import collect
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.prompts import mc_prompt_set
    from lm_eval_iti.tiny import save_tiny

    result, root = first_fit
    other_dir = save_tiny(tmp_path / "other", "llama", seed=5)
    other = AutoModelForCausalLM.from_pretrained(str(other_dir))
    tok = AutoTokenizer.from_pretrained(str(other_dir))
    cache = tmp_path / "cache"
    ident = collect.model_identity(other, str(other_dir), memo_dir=cache)
    prompts = mc_prompt_set(load_mc(v0)[:NQ]).prompts
    meta = collect.cache_meta(other, collect.tokenize_prompts(tok, prompts), 512, ident)
    shutil.copytree(result.collect_stats["probe set"].cache_path, collect.ActivationCache.entry_path(cache, meta))
    out = tmp_path / "out" / "dirs.safetensors"
    out.parent.mkdir()
    code, err = _run_cli(["fit-directions", "--model", str(other_dir), "--out", str(out), "--data-dir", str(v0),
                          "--num-questions", str(NQ), "--cache-dir", str(cache), "--quiet", "--num-heads", "2"], capsys)
    _assert_clean_failure(out, code, err, "written by another model")


def test_sigma_prompts_never_end_with_a_held_out_question():
    """gen_end_q appends a random follow-up question; it is drawn from the question's own fold, so the sigma rows of
    training questions never read the model's state at the end of a test-fold question (and the set is fold-free)."""
    from conftest import shared_data

    from lm_eval_iti.data import load_generation, load_mc
    from lm_eval_iti.folds import fold_assignment
    from lm_eval_iti.prompts import gen_end_q_prompt_set

    v0 = shared_data("truthfulqa", "v0")
    mc, gen = load_mc(v0), load_generation(v0)
    questions = [d["question"] for d in mc]
    groups = fold_assignment(questions, 2, 42)
    fold_of = {q.strip(): g for q, g in zip(questions, groups)}
    sigma = gen_end_q_prompt_set(mc, gen, seed=42, groups=groups)
    assert len(sigma.prompts) > 5000
    for prompt, qi in zip(sigma.prompts, sigma.question_index):
        followup = prompt.rsplit(" Q: ", 1)[1]
        assert fold_of[followup.strip()] == groups[qi]
    assert sigma.prompts == gen_end_q_prompt_set(mc, gen, seed=42, groups=groups).prompts  # deterministic


def test_data_dir_may_name_mc_task_json(tmp_path, tiny_model_dir, v0):
    """--data-dir FOLDER/mc_task.json: the gen_end_q sigma set reads TruthfulQA.csv beside it."""
    from lm_eval_iti.fit import _sigma_generation_docs

    assert len(_sigma_generation_docs(str(v0 / "mc_task.json"))) == 817
    lonely = tmp_path / "mc_task.json"
    lonely.write_text((v0 / "mc_task.json").read_text())
    with pytest.raises(ITIError, match="needs TruthfulQA.csv next to it"):
        _sigma_generation_docs(str(lonely))
