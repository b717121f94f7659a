"""sweep: alpha x K over 2 folds on a tiny Llama; one fit per fold (the largest K), the activation cache reused
(forward passes counted), only evaluation repeated per grid point; table and plots."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_data

from lm_eval_iti.cli import main
from lm_eval_iti.errors import ITIError
from lm_eval_iti.experiments import ExperimentConfig, sweep
from lm_eval_iti.experiments.sweep import parse_list

ALPHAS, KS = [0.0, 3.0, 6.0], [1, 3]


def _corpus(path):
    words = "red green blue cyan magenta yellow black white grey brown pink violet".split()
    lines = [" = Colours = "] + [" " + " ".join(words[(3 * i + j) % 12] for j in range(110)) + " ." for i in range(3)]
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


@pytest.fixture(scope="module")
def swept(tiny_model_dir, tmp_path_factory):
    """The sweep with every call of fit_and_save and every model forward during fitting counted."""
    import lm_eval_iti.fit as fit_module

    root = tmp_path_factory.mktemp("sweep")
    config = ExperimentConfig(model=str(tiny_model_dir), dtype="float32", device="cpu",
                              data_dir=str(shared_data("truthfulqa", "v0")), num_questions=12,
                              tasks=("truthfulqa_iti_mc1",), limit=3, corpus=str(_corpus(root / "c.raw")), num_docs=2,
                              num_tokens=16, cache_dir=str(root / "cache"), progress=False, batch_size=16,
                              fit_batch_size=32)
    calls = []
    original = fit_module.fit_and_save

    def counting_fit(model, out, **kwargs):
        forwards = []
        handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
        try:
            result = original(model, out, **kwargs)
        finally:
            handle.remove()
        calls.append({"num_heads": kwargs["num_heads"], "fold": kwargs["fold"], "model_forwards": len(forwards),
                      "recorded": result.forward_passes, "result": result})
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_module, "fit_and_save", counting_fit)
        results = sweep(config, root / "run", ALPHAS, KS)
    return results, root / "run", calls, config


def test_one_fit_per_fold_and_the_second_reads_the_activation_cache(swept):
    results, _, calls, _ = swept
    assert [(c["fold"], c["num_heads"]) for c in calls] == [(0, 3), (1, 3)]  # not one per grid point
    assert calls[0]["model_forwards"] > 0 and calls[0]["recorded"] == calls[0]["model_forwards"]
    assert calls[1]["model_forwards"] == 0 and calls[1]["recorded"] == 0
    assert [f["forward_passes"] for f in results["fits_this_process"]] == [calls[0]["recorded"], 0]
    assert results["evaluations_this_process"] == 2 * (1 + 2 * 2)  # alpha 0 once, 2 alphas x 2 K, per fold
    assert results["grid"] == {"alphas": ALPHAS, "num_heads": KS, "fits_per_fold": 1, "fit_num_heads": 3}


def test_a_k_row_uses_the_top_k_heads_of_the_largest_fit_which_equals_a_fit_with_k(swept, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_iti.artifact import load_directions
    from lm_eval_iti.fit import fit_and_save

    results, out, calls, config = swept
    for row in results["rows"][1:]:
        for fold_result in results["folds"][row["variant"]]:
            assert fold_result["model_info"]["iti"]["num_heads_used"] == row["K"]
            assert fold_result["model_info"]["iti"]["alpha"] == row["α"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    k1 = fit_and_save(model, out.parent / "k1.safetensors", tokenizer=tok, data_dir=out / "data", num_heads=1,
                        num_folds=2, fold=0, cache_dir=config.cache_dir, progress=False, write_plot=False)
    assert k1.forward_passes == 0
    top1 = load_directions(results["folds"]["iti-a3-k1"][0]["directions"]["path"]).top_k(1)
    assert top1.selected_heads() == k1.directions.selected_heads()
    for layer in k1.directions.heads:
        assert torch.equal(top1.directions[layer], k1.directions.directions[layer])
        assert torch.equal(top1.sigma[layer], k1.directions.sigma[layer])


def test_table_and_plots(swept):
    results, out, _, _ = swept
    rows = results["rows"]
    assert [(r["α"], r["K"]) for r in rows] == [(0.0, None), (3.0, 1), (3.0, 3), (6.0, 1), (6.0, 3)]
    kl = {(r["α"], r["K"]): r["metrics"]["KL"]["mean"] for r in rows}
    assert kl[(0.0, None)] == 0.0 and all(v > 0 for k, v in kl.items() if k[0])
    assert kl[(6.0, 3)] > kl[(3.0, 3)]  # a stronger shift moves the distribution further
    table = (out / "table.md").read_text()
    assert "| ITI (mass-mean) α=6 K=3 | 6 | 3 |" in table
    plots = json.loads((out / "results.json").read_text())["plots"]
    assert plots["truth_vs_info"] is None  # no judge metrics: not drawn
    for name in ("metric_vs_alpha", "ce_kl_vs_alpha"):
        assert open(plots[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_sweep_resumes_the_grid_and_rejects_bad_lists(swept, capsys, tmp_path):
    _, out, _, config = swept
    main(["sweep", "--model", config.model, "--dtype", "float32", "--device", "cpu", "--data-dir", config.data_dir,
          "--num-questions", "12", "--tasks", "truthfulqa_iti_mc1", "--limit", "3", "--alphas", "0,3,6",
          "--num-heads", "1,3", "--corpus", config.corpus, "--num-docs", "2", "--num-tokens", "16",
          "--cache-dir", config.cache_dir, "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert "0 fold x variant evaluations run, 10 resumed from disk" in printed
    assert "plot metric_vs_alpha:" in printed
    with pytest.raises(ITIError, match="repeated"):
        parse_list("1,1", int, "--num-heads")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--model", config.model, "--alphas", "1,x", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "--alphas" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
