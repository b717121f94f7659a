"""Batched probes vs sklearn: the same optimum on synthetic data, the same accuracies and top-K on real activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_data

from lm_eval_iti.errors import ITIError
from lm_eval_iti.probes import fit_probes, fit_probes_sklearn, newton_logistic
from lm_eval_iti.select import rank_heads


def anisotropic(n=400, P=3, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(P, n, d, generator=g, dtype=torch.float64) * torch.exp(torch.randn(d, generator=g, dtype=torch.float64))
    y = ((X[0, :, :3].sum(1) + torch.randn(n, generator=g, dtype=torch.float64)) > 0.3).double()
    return X, y


def test_newton_reaches_the_exact_sklearn_optimum():
    from sklearn.linear_model import LogisticRegression

    X, y = anisotropic()
    w, b, iterations = newton_logistic(X, y, tol=1e-9)
    assert iterations < 30
    for p in range(X.shape[0]):
        ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(X[p].numpy(), y.numpy().astype(int))
        assert np.allclose(w[p].numpy(), ref.coef_[0], atol=1e-5, rtol=1e-5)
        assert abs(float(b[p]) - ref.intercept_[0]) < 1e-5


def test_newton_with_other_C_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    X, y = anisotropic(seed=1)
    w, b, _ = newton_logistic(X, y, C=0.05, tol=1e-9)
    ref = LogisticRegression(C=0.05, tol=1e-12, max_iter=100000).fit(X[1].numpy(), y.numpy().astype(int))
    assert np.allclose(w[1].numpy(), ref.coef_[0], atol=1e-5)


def test_probe_groups_do_not_change_results_and_are_deterministic():
    g = torch.Generator().manual_seed(2)
    acts = torch.randn(120, 2, 3, 8, generator=g).half()
    y = (acts[:, 1, 2, 0].float() + 0.5 * torch.randn(120, generator=g) > 0).long().numpy()
    train, val = list(range(90)), list(range(90, 120))
    one = fit_probes(acts, y, train, val)
    many = fit_probes(acts, y, train, val, max_bytes=1)  # one probe per group
    assert torch.equal(one.accuracy, many.accuracy)
    assert torch.allclose(one.coef, many.coef, atol=1e-4)
    again = fit_probes(acts, y, train, val)
    assert torch.equal(one.coef, again.coef) and torch.equal(one.accuracy, again.accuracy)
    # accuracy is an independent count of correct predictions
    w, b = one.coef[1, 2].double(), one.intercept[1, 2].double()
    pred = (acts[val, 1, 2].double() @ w + b > 0).numpy()
    assert float(one.accuracy[1, 2]) == pytest.approx(np.mean(pred == y[val].astype(bool)))


def test_a_class_with_no_examples_is_an_error():
    acts = torch.randn(20, 1, 2, 4).half()
    with pytest.raises(ITIError, match="no examples"):
        fit_probes(acts, np.ones(20, dtype=int), list(range(15)), list(range(15, 20)))
    with pytest.raises(ITIError, match="no examples"):
        fit_probes_sklearn(acts, np.zeros(20, dtype=int), list(range(15)), list(range(15, 20)))


@pytest.fixture(scope="module")
def real_activations(tmp_path_factory):
    """Activations of a small random Llama (4 layers x 8 heads) on the first 40 TruthfulQA v0 questions.

    initializer_range 0.5 gives activations of order 1 like a trained model's (at the default 0.02 they are ~1e-3
    and the C=1 penalty makes every probe predict the majority class: a vacuous comparison)."""
    from lm_eval_iti.collect import collect_activations
    from lm_eval_iti.data import load_mc
    from lm_eval_iti.prompts import mc_prompt_set
    from lm_eval_iti.select import split_train_val
    from lm_eval_iti.tiny import build_model, build_tokenizer

    docs = load_mc(shared_data("truthfulqa", "v0"))[:40]
    tok = build_tokenizer()
    model = build_model("llama", seed=3, vocab_size=len(tok), hidden=64, layers=4, heads=8,
                        initializer_range=0.5)
    ps = mc_prompt_set(docs, "qa")
    acts = collect_activations(model, tok, ps.prompts, batch_size=32, use_cache=False, progress=False)
    train_q, val_q = split_train_val(list(range(len(docs))), 0.2, seed=42)
    return acts, np.asarray(ps.labels), ps.rows_of_questions(train_q), ps.rows_of_questions(val_q)


def test_batched_probes_agree_with_sklearn_on_model_activations(real_activations):
    acts, y, train, val = real_activations
    batched = fit_probes(acts, y, train, val)
    ref = fit_probes_sklearn(acts, y, train, val, seed=42)
    diff = (batched.accuracy - ref.accuracy).abs()
    assert float(diff.mean()) <= 0.01, diff
    k = 10
    top_b = {tuple(p) for p in rank_heads(batched.accuracy)[:k].tolist()}
    top_r = {tuple(p) for p in rank_heads(ref.accuracy)[:k].tolist()}
    assert len(top_b & top_r) / k >= 0.9
    # not a vacuous agreement: the heads differ in accuracy and the probes learned something
    assert float(ref.accuracy.max() - ref.accuracy.min()) > 0.02
    cos = torch.nn.functional.cosine_similarity(batched.coef.reshape(-1, acts.shape[-1]),
                                                ref.coef.reshape(-1, acts.shape[-1]), dim=1)
    assert float(cos.min()) > 0.99
