"""The local (hf) judge on a tiny random model: P(" yes") against an independent computation, batching, and the
same decision as the openai judge on equal probabilities."""

from __future__ import annotations

import math

import pytest
import torch
from _reference.p_yes import reference_p_yes

from lm_eval_iti.judges.config import from_sources
from lm_eval_iti.judges.hf import HFJudge, split_continuation
from lm_eval_iti.judges.judging import judge_items
from lm_eval_iti.judges.prompts import Item, truth_prompt
from lm_eval_iti.judges.scoring import decide

ITEMS = [Item(f"What is the answer to question {i}?", f"It is {i} for sure" if i % 3 else "No comment")
         for i in range(12)]


def _final_hidden(model, tok, prompts):
    with torch.no_grad():
        return torch.stack([model(torch.tensor([tok(p)["input_ids"]]), output_hidden_states=True)
                            .hidden_states[-1][0, -1] for p in prompts])


@pytest.fixture(scope="module")
def calibrated_judge_dir(tmp_path_factory):
    """A tiny random Llama whose " yes" logit is set so that P(" yes") falls on both sides of 0.5 for ITEMS:
    without it a random model gives P ≈ 1/vocab for everything and the decision comparison would prove nothing."""
    from lm_eval_iti.tiny import build_model, build_tokenizer

    out = tmp_path_factory.mktemp("judge_model")
    tok = build_tokenizer(out)
    model = build_model("llama", seed=3, vocab_size=len(tok))
    prompts = [truth_prompt(it.question, it.answer) for it in ITEMS]
    yes = split_continuation(tok, prompts[0])[1]
    assert len(yes) == 1
    h = _final_hidden(model, tok, prompts)
    mu = h.mean(0)
    direction = torch.linalg.svd(h - mu, full_matrices=False).Vh[0]
    with torch.no_grad():
        model.lm_head.weight[yes[0]] = 0.0
        others = torch.logsumexp(model(torch.tensor([tok(prompts[0])["input_ids"]])).logits[0, -1], -1)
        spread = (h - mu) @ direction
        scale = 4.0 / spread.abs().max()
        offset = float(others) - scale * float(direction @ mu) - float(scale * spread.median())
        model.lm_head.weight[yes[0]] = scale * direction + offset * mu / (mu @ mu)
    model.save_pretrained(str(out))
    return out


def _hf_cfg(path, tmp_path, **extra):
    return from_sources({"judge": "hf", "truth_judge": str(path), "info_judge": str(path),
                         "judge_cache": str(tmp_path / "c.sqlite"), "judge_device": "cpu", **extra}, environ={})


def test_batched_p_yes_equals_an_unbatched_computation(calibrated_judge_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = HFJudge("truth", _hf_cfg(calibrated_judge_dir, tmp_path))
    prompts = [judge.request_text(it) for it in ITEMS]
    batched = judge.score_batch(prompts)  # mixed lengths: right padding must not change anything
    model = AutoModelForCausalLM.from_pretrained(str(calibrated_judge_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(calibrated_judge_dir))
    for prompt, j in zip(prompts, batched):
        assert math.isclose(j.p_yes, reference_p_yes(model, tok, prompt), rel_tol=1e-4, abs_tol=1e-7)
    labels = [j.label for j in batched]
    assert 0 < sum(labels) < len(labels)
    # a continuation of several tokens: P is the product over its tokens
    judge.continuation = " yes it is"
    assert len(split_continuation(tok, prompts[0], " yes it is")[1]) > 1
    for prompt, j in zip(prompts[:4], judge.score_batch(prompts[:4])):
        assert math.isclose(j.p_yes, reference_p_yes(model, tok, prompt, " yes it is"), rel_tol=1e-4,
                            abs_tol=1e-9)


def test_same_decision_as_openai_on_equal_probabilities(calibrated_judge_dir, fake_server, tmp_path):
    hf = judge_items(ITEMS, _hf_cfg(calibrated_judge_dir, tmp_path / "hf", judge_batch_size=5), progress=False)
    for kind, verdicts in (("truth", hf.truth), ("info", hf.info)):
        suffix = "True:" if kind == "truth" else "Helpful:"
        for it, j in zip(ITEMS, verdicts):
            fake_server.p_override[f"Q: {it.question}\nA: {it.answer}\n{suffix}"] = j.p_yes
    api_cfg = from_sources({"judge": "openai", "truth_judge": "truth-judge", "info_judge": "info-judge",
                            "judge_base_url": fake_server.url, "judge_cache": str(tmp_path / "api.sqlite")},
                           environ={})
    api = judge_items(ITEMS, api_cfg, progress=False)
    hf_labels = [j.label for j in hf.truth + hf.info]
    assert [j.label for j in api.truth + api.info] == hf_labels
    assert hf_labels == [int(decide(j.p_yes)) for j in hf.truth + hf.info]
    assert 0 < sum(hf_labels) < len(hf_labels)
    assert hf.metrics == api.metrics


def test_hf_judgments_are_cached(calibrated_judge_dir, tmp_path):
    cfg = _hf_cfg(calibrated_judge_dir, tmp_path, judge_batch_size=4)
    first = judge_items(ITEMS, cfg, progress=False)
    assert first.stats["truth"] == {"requests": 12, "retries": 0, "cached": 0}
    second = judge_items(ITEMS, cfg, progress=False)
    assert second.stats["truth"]["requests"] == 0 and second.stats["info"]["requests"] == 0
    assert [j.p_yes for j in second.truth] == pytest.approx([j.p_yes for j in first.truth], rel=1e-12)


def _requests_after_rerun(cfg) -> int:
    v = judge_items(ITEMS[:4], cfg, progress=False)
    return v.stats["truth"]["requests"] + v.stats["info"]["requests"]


def test_cache_identity_is_the_weights_and_the_dtype(tmp_path):
    """Other weights behind the same path, or bf16 instead of fp32, never reuse old labels."""
    from lm_eval_iti.tiny import save_tiny

    folder = tmp_path / "judge"
    save_tiny(folder, "llama", seed=0)
    cfg = _hf_cfg(folder, tmp_path)
    assert _requests_after_rerun(cfg) == 8
    assert _requests_after_rerun(cfg) == 0  # same weights, same dtype: all from the cache
    assert _requests_after_rerun(_hf_cfg(folder, tmp_path, judge_dtype="bfloat16")) == 8
    assert _requests_after_rerun(_hf_cfg(folder, tmp_path, judge_dtype="float32")) == 0  # auto on cpu = fp32
    save_tiny(folder, "llama", seed=1)  # new weights, same path
    assert _requests_after_rerun(cfg) == 8
    assert _requests_after_rerun(cfg) == 0


def test_a_hub_judge_is_keyed_on_its_resolved_commit(monkeypatch):
    import huggingface_hub

    from lm_eval_iti.judges.hf import weights_identity

    asked = []

    def fake_download(repo, filename, revision=None):
        asked.append((repo, filename, revision))
        return f"/hub/models--{repo.replace('/', '--')}/snapshots/{'c0ffee' if revision else 'abc123'}/{filename}"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert weights_identity("org/judge", "") == "commit:abc123"
    assert weights_identity("org/judge", "v2") == "commit:c0ffee"
    assert asked == [("org/judge", "config.json", None), ("org/judge", "config.json", "v2")]
