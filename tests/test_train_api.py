"""``iti.train`` on any labelled prompts, against an independent computation, and TruthfulQA as one source of samples
(equal to fit_directions with the same options)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _reference.activations import reference_activation
from conftest import tqa_v0
from lm_eval_iti.errors import ITIError

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]


def pairs():
    """(prompt, label, group): a true and two false statements about each colour, grouped by colour."""
    out = []
    for i, colour in enumerate(COLOURS):
        out.append((f"The colour {colour} is a colour. True.", 1, colour))
        out.append((f"The colour {colour} is a number. True.", 0, colour))
        out.append((f"The colour {colour} is {COLOURS[(i + 1) % 8]}. True.", 0, colour))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(tiny_model_dir)))


def plain_hook_activations(model, tokenizer, prompts) -> torch.Tensor:
    """[N, L, H, d] out-projection inputs at the last token, one unpadded prompt per forward (the test reference's
    own hooks), rounded to fp16 as the activation store keeps them: an independent path to the same numbers."""
    return torch.stack([reference_activation(model, tokenizer, p) for p in prompts]).half().float()


def test_train_on_labelled_pairs_matches_an_independent_computation(tiny):
    import lm_eval_iti as iti

    model, tok = tiny
    data = pairs()
    sigma_prompts = [f"Tell me about {c}." for c in COLOURS]
    dirs = iti.train(model, tok, data, num_heads=3, sigma_samples=sigma_prompts, alpha=2.0, val_ratio=0.25,
                     progress=False)
    acts = plain_hook_activations(model, tok, [p for p, _, _ in data])
    sigma_acts = plain_hook_activations(model, tok, sigma_prompts)
    labels = torch.tensor([y for _, y, _ in data]).bool()
    assert dirs.num_selected == 3 and dirs.alpha == 2.0
    for layer, heads in dirs.heads.items():
        for row, head in enumerate(heads.tolist()):
            x = acts[:, layer, head].double()
            raw = x[labels].mean(0) - x[~labels].mean(0)
            unit = raw / raw.norm()
            sigma = (sigma_acts[:, layer, head].double() @ unit).std(correction=1)
            torch.testing.assert_close(dirs.directions[layer][row].double(), unit, atol=1e-5, rtol=0)
            torch.testing.assert_close(dirs.sigma[layer][row].double(), sigma, atol=1e-5, rtol=1e-5)
    # probes validated on whole held-out groups; the groups' question ids recorded for the leak guard
    from lm_eval_iti.folds import question_id

    assert json.loads(dirs.metadata["train_question_ids"]) == sorted(question_id(c) for c in COLOURS)
    assert dirs.metadata["num_samples"] == "24" and dirs.metadata["num_groups"] == "8"


def test_train_saves_loads_and_steers(tiny, tmp_path):
    import lm_eval_iti as iti

    model, tok = tiny
    dirs = iti.train(model, tok, pairs(), num_heads=2, progress=False)
    path = dirs.save(tmp_path / "d.safetensors")
    again = iti.Directions.load(path, model)
    assert again.metadata["samples_sha256"] == dirs.metadata["samples_sha256"]
    batch = tok("The colour red is", return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits
        with again.apply(model, alpha=5.0):
            steered = model(**batch).logits
    assert not torch.equal(plain, steered)


@pytest.mark.parametrize("bad,match", [
    ([], "no samples"),
    ([("a", 1), ("b", 1), ("c", 1)], "every label is 1"),
    ([("a", 2), ("b", 0)], "label 2 is not 0 or 1"),
    ([("", 1), ("b", 0)], "the prompt is empty"),
    ([("a",)], "expected \\(prompt, label\\[, group\\]\\)"),
    ([{"prompt": "a"}], "needs 'prompt' and 'label'"),
])
def test_bad_samples_are_one_line(tiny, bad, match):
    import lm_eval_iti as iti

    with pytest.raises(ITIError, match=match):
        iti.train(*tiny, bad, num_heads=2, progress=False)


def test_truthfulqa_samples_give_the_fit_of_fit_directions(tiny):
    """The adapter plus train is the fit: the same probe split, heads, directions and sigma (sigma on the probe set)."""
    import lm_eval_iti as iti

    model, tok = tiny
    options = dict(num_folds=2, fold=0, num_questions=24, seed=3)
    tqa = iti.truthfulqa.samples(str(tqa_v0()), **options)
    assert {s.label for s in tqa.samples} == {0, 1} and tqa.sigma_samples is None
    trained = iti.train(model, tok, tqa.samples, num_heads=4, seed=3, progress=False, **tqa.train_kwargs())
    fitted = iti.fit_directions(model, tok, data_dir=str(tqa_v0()), num_heads=4, sigma_data="mc", progress=False,
                                **options)
    assert trained.selected_heads() == fitted.selected_heads()
    for layer in fitted.heads:
        assert torch.equal(trained.heads[layer], fitted.heads[layer])
        torch.testing.assert_close(trained.directions[layer], fitted.directions[layer], atol=1e-6, rtol=0)
        torch.testing.assert_close(trained.sigma[layer], fitted.sigma[layer], atol=1e-6, rtol=1e-6)
    assert set(json.loads(trained.metadata["train_question_ids"])) == set(json.loads(fitted.metadata["train_question_ids"]))
    assert trained.metadata["dataset_sha256"] == fitted.metadata["dataset_sha256"]
    assert np.isclose(float(trained.probe_accuracy.max()), float(fitted.probe_accuracy.max()))
