"""One logistic-regression probe per (layer, head), all solved at once in torch, and the sklearn loop as the reference.

Objective (sklearn's ``LogisticRegression()`` default: L2, C=1.0, lbfgs, unpenalised intercept), per probe:
    minimise  0.5 * ||w||^2 + C * sum_i [softplus(x_i.w + b) - y_i (x_i.w + b)]
It is strictly convex, so every solver that converges reaches the same optimum. The batched solver is Newton's method
with a backtracking line search, run on groups of probes ([G, n, d] fp32 batches, memory bounded by ``max_bytes``),
until the gradient of sklearn's scaled objective (the above divided by C*n) is below ``tol`` (1e-5) in every
coordinate (ten times tighter than sklearn's own stopping rule, 1e-4), or until the Newton decrement falls below
the objective's floating-point resolution (the float32 noise floor); converged probes leave the batch. No randomness: results are deterministic for given inputs.
Features are the raw activations, not standardised, exactly as the reference fed them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .choices import PROBE_BACKENDS, PROBE_MEMORY  # noqa: F401  (re-exported)
from .errors import ITIError


def check_probe_memory(probe_memory: str, probe_backend: str = "torch", use_cache: bool = True) -> None:
    if probe_memory not in PROBE_MEMORY:
        raise ITIError(f"probe_memory={probe_memory!r} is not one of {', '.join(PROBE_MEMORY)}")
    if probe_memory == "stream" and probe_backend != "torch":
        raise ITIError("probe_memory='stream' needs probe_backend='torch' (the sklearn loop holds every activation)")
    if probe_memory == "stream" and not use_cache:
        raise ITIError("probe_memory='stream' reads activations from the activation cache: do not disable it")


@dataclass
class ProbeResult:
    """Validation accuracy [L, H], weights [L, H, d] and intercepts [L, H] of every head's probe."""

    accuracy: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor
    backend: str
    iterations: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def _objective(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, C: float) -> torch.Tensor:
    return 0.5 * (w * w).sum(-1) + C * (torch.nn.functional.softplus(z) - y * z).sum(-1)


def newton_logistic(X: torch.Tensor, y: torch.Tensor, C: float = 1.0, tol: float = 1e-5,
                    max_iter: int = 50) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Solve P L2-logistic regressions at once: X [P, n, d] (float), y [n] in {0, 1} -> (w [P, d], b [P], iterations).

    Newton steps solve the (d+1)x(d+1) system in float64; Hessian and gradient are formed in X's dtype. A probe leaves
    the batch once converged, so stubborn probes do not make the others pay for more Hessians.
    """
    if X.dim() != 3:
        raise ValueError(f"X must be [probes, rows, features], got {list(X.shape)}")
    P, n, d = X.shape
    dev, dt = X.device, X.dtype
    y = y.to(device=dev, dtype=dt)
    w_all = torch.zeros(P, d, device=dev, dtype=dt)
    b_all = torch.zeros(P, device=dev, dtype=dt)
    eye = torch.eye(d + 1, device=dev, dtype=torch.float64)
    eye[d, d] = 0.0  # the intercept is not penalised
    scale = C * n  # sklearn minimises the objective divided by C*n; its tolerance is on that gradient
    active = torch.arange(P, device=dev)
    Xa = X
    iterations = 0
    for iterations in range(1, max_iter + 1):
        w, b = w_all[active], b_all[active]
        z = torch.bmm(Xa, w.unsqueeze(-1)).squeeze(-1) + b[:, None]  # recomputed, not accumulated: no drift
        p = torch.sigmoid(z)
        r = p - y
        g = torch.cat([C * torch.bmm(r.unsqueeze(1), Xa).squeeze(1) + w, C * r.sum(1, keepdim=True)], dim=1)
        done = g.abs().amax(1) / scale <= tol
        if bool(done.any()):
            keep = ~done
            active, w, b, z, p, g = active[keep], w[keep], b[keep], z[keep], p[keep], g[keep]
            if active.numel() == 0:
                break
            Xa = X.index_select(0, active)
        s = (C * p * (1 - p)).clamp_min(1e-12)
        xs = Xa * s.unsqueeze(-1)
        m = len(active)
        hess = torch.empty(m, d + 1, d + 1, device=dev, dtype=torch.float64)
        hess[:, :d, :d] = torch.bmm(xs.transpose(1, 2), Xa).double()
        col = xs.sum(1).double()
        hess[:, :d, d] = col
        hess[:, d, :d] = col
        hess[:, d, d] = s.sum(1).double()
        hess += eye
        del xs
        chol, info = torch.linalg.cholesky_ex(hess)
        if bool((info != 0).any()):  # numerically singular: fall back to a least-squares step
            step = torch.linalg.lstsq(hess, g.double().unsqueeze(-1)).solution.squeeze(-1)
        else:
            step = torch.cholesky_solve(g.double().unsqueeze(-1), chol).squeeze(-1)
        step = step.to(dt)
        dz = torch.bmm(Xa, step[:, :d].unsqueeze(-1)).squeeze(-1) + step[:, d:]
        f0 = _objective(z, y, w, C)
        slope = (g * step).sum(1)  # the Newton decrement: about twice the distance to the optimum's objective
        t = torch.ones(m, device=dev, dtype=dt)
        for _ in range(12):  # backtracking (Armijo); a full step is almost always accepted
            f1 = _objective(z - t[:, None] * dz, y, w - t[:, None] * step[:, :d], C)
            bad = f1 > f0 - 1e-4 * t * slope
            if not bool(bad.any()):
                break
            t = torch.where(bad, t * 0.5, t)
        t = torch.where(bad & (f1 >= f0), torch.zeros_like(t), t)
        w_all[active] = w - t[:, None] * step[:, :d]
        b_all[active] = b - t * step[:, d]
        # At the optimum to working precision: the predicted decrease is below the objective's rounding, or the line
        # search found no real descent (rounding noise in g). Such a probe leaves the batch.
        resolution = 16 * torch.finfo(dt).eps * f0.abs().clamp_min(1.0)
        settled = (0.5 * slope <= resolution) | bad
        if bool(settled.any()):
            active = active[~settled]
            if active.numel() == 0:
                break
            Xa = X.index_select(0, active)
    return w_all, b_all, iterations


def _labels(y, rows, what: str) -> torch.Tensor:
    yy = torch.as_tensor(np.asarray(y)[np.asarray(rows, dtype=np.int64)], dtype=torch.float32)
    if yy.numel() == 0:
        raise ITIError(f"the {what} split has no rows")
    if bool((yy == 1).all()) or bool((yy == 0).all()):
        raise ITIError(f"the {what} split has only class {int(yy[0])} answers: a class with no examples "
                       "(need true and false answers to fit probes)")
    return yy


class LayerBlocks:
    """Streaming input of ``fit_probes``: a tensor-like [N, L, H, d] of which only a block of layers is in memory.

    Anything with ``shape`` and ``read_layers(start, stop) -> [N, stop-start, H, d]`` (e.g.
    ``collect.CachedActivations``, which reads them from the activation cache's chunk files) can stand in for it.
    """

    shape: tuple[int, int, int, int]

    def read_layers(self, start: int, stop: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def probe_working_bytes(n: int, d: int) -> int:
    """Bytes one probe of a group holds while newton_logistic runs: X and its weighted copy (fp32, n x d each) and the
    (d+1)^2 Hessian as the fp32 product, its fp64 copy, the assembled system and its Cholesky factor."""
    return n * d * 4 * 2 + (d + 1) * (d + 1) * (4 + 8 + 8 + 8)


def fit_probes(acts, labels, train_rows, val_rows, *, C: float = 1.0, tol: float = 1e-5,
               max_iter: int = 50, device: str | torch.device | None = None, max_bytes: int | None = None,
               progress: bool = False, block_bytes: int | None = None) -> ProbeResult:
    """Train every head's probe on ``train_rows`` and score it on ``val_rows``. acts: [N, L, H, d] (any float dtype).

    ``acts`` may also be a streaming source (``LayerBlocks``: a ``read_layers`` method): the probes are then fitted
    from blocks of whole layers of at most ``block_bytes`` (default ``max_bytes``; at least the layers one group of
    probes spans), so the [N, L, H, d] tensor is never in memory at once. The groups of probes are the same in both
    modes and each group sees the same numbers, so the results are identical.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    N, L, H, d = acts.shape
    streaming = not isinstance(acts, torch.Tensor)
    if streaming and not hasattr(acts, "read_layers"):
        raise TypeError(f"acts must be a tensor or have read_layers(start, stop), got {type(acts).__name__}")
    y_train = _labels(labels, train_rows, "probe-training")
    y_val = torch.as_tensor(np.asarray(labels)[np.asarray(val_rows, dtype=np.int64)], dtype=torch.float32)
    if y_val.numel() == 0:
        raise ITIError("the probe-validation split has no rows (val_ratio too small for the number of questions?)")
    device = torch.device(device) if device is not None else (torch.device("cpu") if streaming else acts.device)
    if max_bytes is None:  # working memory per group of probes
        max_bytes = (2 << 30) if device.type == "cuda" else (256 << 20)
    flat = None if streaming else acts.reshape(N, L * H, d)
    train_idx = torch.as_tensor(np.asarray(train_rows, dtype=np.int64))
    val_idx = torch.as_tensor(np.asarray(val_rows, dtype=np.int64))
    n = len(train_idx)
    group = max(1, min(L * H, int(max_bytes // probe_working_bytes(n, d))))
    coef = torch.empty(L * H, d)
    intercept = torch.empty(L * H)
    accuracy = torch.empty(L * H)
    most_iterations = 0
    y_train_dev, y_val_dev = y_train.to(device), y_val.to(device)
    if streaming:
        row_bytes = N * H * d * 2  # one layer of every row, fp16
        block_layers = max(1, int((block_bytes or max_bytes) // max(1, row_bytes)))
        block = _BlockReader(acts, block_layers, H)
    for start in tqdm(range(0, L * H, group), desc="probes", unit="group", disable=not progress):
        heads = slice(start, min(start + group, L * H))
        if streaming:
            flat, heads = block.covering(heads)  # the layers holding these probes, and their columns in that block
        X = flat[train_idx, heads].to(device=device, dtype=torch.float32).transpose(0, 1).contiguous()
        w, b, its = newton_logistic(X, y_train_dev, C=C, tol=tol, max_iter=max_iter)
        most_iterations = max(most_iterations, its)
        del X
        Xv = flat[val_idx, heads].to(device=device, dtype=torch.float32).transpose(0, 1)
        pred = (torch.bmm(Xv, w.unsqueeze(-1)).squeeze(-1) + b[:, None]) > 0  # sklearn: decision_function > 0
        done = slice(start, start + (heads.stop - heads.start))
        accuracy[done] = (pred == y_val_dev.bool()).float().mean(1).cpu()
        coef[done] = w.cpu()
        intercept[done] = b.cpu()
    info = {"C": C, "tol": tol, "solver": "batched newton"}
    if streaming:
        info.update(mode="streaming", layer_reads=block.reads, largest_block_bytes=block.largest_bytes)
    info["groups"] = -(-(L * H) // group)
    return ProbeResult(accuracy.view(L, H), coef.view(L, H, d), intercept.view(L, H), "torch", most_iterations,
                       time.perf_counter() - started, info)


class _BlockReader:
    """Holds one block of whole layers of a streaming source, read anew only when a group of probes leaves it."""

    def __init__(self, source, block_layers: int, heads_per_layer: int):
        self.source, self.block_layers, self.H = source, block_layers, heads_per_layer
        self.num_layers = source.shape[1]
        self.first = self.stop = 0
        self.flat = None
        self.reads = 0
        self.largest_bytes = 0

    def covering(self, heads: slice) -> tuple[torch.Tensor, slice]:
        """(block [N, layers*H, d], the probes' columns in it) for the flattened probe indices ``heads``."""
        first, last = heads.start // self.H, (heads.stop - 1) // self.H
        if not (self.first <= first and last < self.stop and self.flat is not None):
            self.flat = None  # drop the old block before reading the next one
            self.first, self.stop = first, min(self.num_layers, max(last + 1, first + self.block_layers))
            block = self.source.read_layers(self.first, self.stop)
            self.flat = block.reshape(block.shape[0], -1, block.shape[-1])
            self.reads += 1
            self.largest_bytes = max(self.largest_bytes, block.element_size() * block.nelement())
        offset = self.first * self.H
        return self.flat, slice(heads.start - offset, heads.stop - offset)


def fit_probes_sklearn(acts: torch.Tensor, labels, train_rows, val_rows, *, seed: int = 42, max_iter: int = 1000,
                       progress: bool = False) -> ProbeResult:
    """The reference loop: one ``LogisticRegression(random_state=seed, max_iter=1000)`` per head, one after another."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from tqdm.auto import tqdm

    started = time.perf_counter()
    y_train = _labels(labels, train_rows, "probe-training").numpy().astype(int)
    y_val = np.asarray(labels)[np.asarray(val_rows, dtype=np.int64)].astype(int)
    N, L, H, d = acts.shape
    flat = acts.reshape(N, L * H, d)
    train = flat[torch.as_tensor(np.asarray(train_rows, dtype=np.int64))].numpy()
    val = flat[torch.as_tensor(np.asarray(val_rows, dtype=np.int64))].numpy()
    coef = np.empty((L * H, d), dtype=np.float32)
    intercept = np.empty(L * H, dtype=np.float32)
    accuracy = np.empty(L * H, dtype=np.float32)
    most_iterations = 0
    for k in tqdm(range(L * H), desc="probes (sklearn)", unit="head", disable=not progress):
        clf = LogisticRegression(random_state=seed, max_iter=max_iter).fit(train[:, k], y_train)
        accuracy[k] = accuracy_score(y_val, clf.predict(val[:, k]))
        coef[k] = clf.coef_[0]
        intercept[k] = clf.intercept_[0]
        most_iterations = max(most_iterations, int(clf.n_iter_[0]))
    return ProbeResult(torch.from_numpy(accuracy).view(L, H), torch.from_numpy(coef).view(L, H, d),
                       torch.from_numpy(intercept).view(L, H), "sklearn", most_iterations,
                       time.perf_counter() - started, {"C": 1.0, "solver": "lbfgs", "max_iter": max_iter})
