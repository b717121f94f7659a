"""Score loglikelihood requests at many steering points at once, sharing every forward pass that no edit touches.

A request is lm-eval's token pair (context_ids, continuation_ids). Its model input is lm-eval's
``(context + continuation)[-(max_length + 1):][:-1]`` (n tokens, left-truncated like HFLM), and the last X = len(cont)
logits score the continuation: positions s .. n-1 with s = n - X (for an untruncated request s = C-1). Which positions
an intervention edits is hf-iti's rule (``intervene.answer_mask`` / ``model.HFITI``):
  ``answer``: s .. n-1;  ``legacy``: s+2 .. n-1;  ``all``: every position.
So for ``answer`` and ``legacy`` the positions 0 .. s-1 (the request's *prefix*) are unedited: their keys and values
are the plain model's, the same for every choice of a question and every point. The engine then
  1. runs each *common prefix* once: the longest common prefix, token by token, of a run of prefixes
     (``prefix_clusters``: instruction and primer, when they tokenize identically; a tokenizer merging across the
     boundary makes it shorter, never wrong; a task with another prompt, or a left-truncated request, forms its own
     run);
  2. runs each distinct prefix's remainder once on a fork of that cache;
  3. runs positions s .. n-1 of every request of that prefix x every point as the rows of a batch (right-padded;
     causal attention keeps padding invisible; rows sorted by length and chunked so that padding stays under a
     quarter of a chunk), each row adding its own point's shift at its edited positions.
For ``all`` the prefix itself is edited, so steps 1-2 run once per point (shared across that point's choices only).
Identical requests (an MC1 choice that is also an MC2 choice of the same prompt) and points that edit nothing
(alpha 0, whatever K) are scored once.

Memory bound: the batch of step 3 holds, per row, the prefix cache copy and the suffix (a + T tokens, a = prefix
length, T = the longest suffix of the group) and T logits rows, so rows are chunked such that
    rows * ((a + T) * kv_bytes_per_token + T * vocab_size * logits_bytes) <= max_batch_bytes
(at least one row per chunk), with kv_bytes_per_token = 2 * num_layers * num_kv_heads * head_dim * dtype bytes (from
the config). Besides the batch, the engine keeps the common-prefix cache and one prefix cache (each one sequence of at
most max_length tokens). Chunking changes no number: each row's computation is independent of the others'.

Pure torch and transformers: no lm-eval import (``harness.engine`` builds the requests from lm-eval's tasks).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .architectures import model_shape, out_projections
from .artifact import Directions
from .errors import ITIError
from .intervene import MC_POSITIONS

DEFAULT_MAX_BATCH_BYTES = 1 << 30
_OWNER_ATTRIBUTE = "_lm_eval_iti_intervener"  # intervene.Intervener marks the model it hooks


@dataclass(frozen=True)
class Point:
    """One steering setting: layer -> float32 shift [num_heads * head_dim] (empty: no edit)."""

    alpha: float
    num_heads: int | None
    vectors: dict[int, torch.Tensor] = field(hash=False, compare=False)


def make_points(directions: Directions, settings: list[tuple[float, int | None]]) -> list[Point]:
    """(alpha, K) -> Point with the shifts of the file's top-K heads at strength alpha (K None: every head);
    alpha 0 edits nothing, as in hf-iti."""
    points = []
    for alpha, k in settings:
        used = directions.top_k(k) if k else directions
        vectors = used.shift_vectors(float(alpha)) if float(alpha) != 0.0 else {}
        points.append(Point(float(alpha), k, vectors))
    return points


@dataclass
class _Request:
    index: int
    tokens: list[int]  # the model input (n tokens)
    continuation: list[int]
    start: int  # s = n - X: the first scored position
    edit_from: int  # first edited position (n: none)
    truncated: bool

    @property
    def prefix(self) -> tuple[int, ...]:
        return tuple(self.tokens[:self.start])


def _requests(pairs, max_length: int, mode: str) -> list[_Request]:
    out = []
    for i, (context, continuation) in enumerate(pairs):
        context, continuation = list(context), list(continuation)
        if not context or not continuation:
            raise ITIError(f"request {i}: empty context or continuation token ids (lm-eval never builds these)")
        if len(continuation) > max_length:
            raise ITIError(f"request {i}: continuation of {len(continuation)} tokens exceeds max_length {max_length}")
        whole = context + continuation
        tokens = whole[-(max_length + 1):][:-1]
        start = len(tokens) - len(continuation)
        edit_from = {"answer": start, "legacy": min(start + 2, len(tokens)), "all": 0}[mode]
        out.append(_Request(i, tokens, continuation, start, edit_from, len(whole) > max_length + 1))
    return out


def common_prefix(sequences) -> int:
    """Length of the longest common prefix, compared token by token."""
    sequences = list(sequences)
    if not sequences:
        return 0
    length = min(len(s) for s in sequences)
    first = sequences[0]
    for other in sequences[1:]:
        i = 0
        while i < length and other[i] == first[i]:
            i += 1
        length = i
    return length


def prefix_clusters(prefixes: list[tuple[int, ...]]) -> list[tuple[int, list[tuple[int, ...]]]]:
    """Distinct prefixes grouped into runs that share a common prefix: [(shared length, prefixes)].

    In sorted order the common prefix of a run is that of its first and last member. A prefix joins the current run
    when that saves tokens: a run of m prefixes sharing l tokens costs sum(lengths) - (m-1)*l forward tokens, so the
    next one joins when m*l' > (m-1)*l (l': the shared length with it). A prompt whose primer tokenizes differently
    therefore shares less (or starts its own run), and a left-truncated request usually runs alone."""
    runs: list[tuple[int, list]] = []
    for prefix in sorted(set(prefixes)):
        if runs:
            shared, members = runs[-1]
            joined = common_prefix([members[0], prefix])
            if len(members) * joined > (len(members) - 1) * shared:
                runs[-1] = (joined, members + [prefix])
                continue
        runs.append((len(prefix), [prefix]))
    return runs


class RowShifts:
    """Forward pre-hooks adding, per batch row, that row's own shift at that row's edited positions.

    ``set(vectors_per_row, mask)``: a list (one per row) of {layer: float32 vector} and a bool mask [B, T]. The add is
    hf-iti's: the vector cast to the activation dtype, ``where(mask, x + v, x)`` (unedited entries stay identical)."""

    def __init__(self, model, layers):
        self._projections = out_projections(model)
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [self._projections[layer].register_forward_pre_hook(self._hook(layer))
                         for layer in sorted(layers)]

    def set(self, row_vectors: list[dict[int, torch.Tensor]], mask: torch.Tensor | None) -> None:
        self._rows = {}
        if mask is None:
            return
        for layer in {layer for vectors in row_vectors for layer in vectors}:
            projection = self._projections[layer]
            width = next(iter(v[layer] for v in row_vectors if layer in v)).numel()
            stacked = torch.zeros(len(row_vectors), width, dtype=torch.float32)
            has = torch.zeros(len(row_vectors), dtype=torch.bool)
            for row, vectors in enumerate(row_vectors):
                if layer in vectors:
                    stacked[row] = vectors[layer]
                    has[row] = True
            device = projection.weight.device
            # every position edited: a plain add (a row without this layer adds zeros, which changes nothing)
            edited = None if bool(mask.all()) else (mask.to(device) & has.to(device)[:, None])
            self._rows[layer] = (stacked.to(device), edited)

    def _hook(self, layer):
        def hook(module, args):
            entry = self._rows.get(layer)
            if entry is None:
                return None
            vectors, mask = entry
            x = args[0]
            shifted = x + vectors.to(x.dtype)[:, None, :]
            if mask is None:
                return (shifted,) + tuple(args[1:])
            return (torch.where(mask[..., None], shifted, x),) + tuple(args[1:])
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _new_cache(model):
    """A dynamic cache whose sliding-window layers (Gemma 2/3, Mistral with ``sliding_window``) keep every key like
    the full layers: the model's sliding mask, built from ``config.sliding_window`` and absolute positions, still
    hides the keys outside the window, so each position attends to exactly what it attends to in hf-iti's full
    forward, and every layer can be forked."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    cache = DynamicCache(config=model.config)
    cache.layers = [DynamicLayer() if type(layer) is DynamicSlidingWindowLayer else layer for layer in cache.layers]
    return cache


def _fork(cache, rows: int = 1):
    """A cache continuing from ``cache`` with ``rows`` batch rows; ``cache`` itself is left untouched (the layers'
    update concatenates into new tensors, so expanded views of the old ones are safe)."""
    from transformers.cache_utils import DynamicLayer

    forked = copy.copy(cache)
    forked.layers = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ITIError(f"the sweep engine supports plain dynamic KV caches only (this model uses "
                           f"{type(layer).__name__}); run the sweep with --engine off")
        clone = copy.copy(layer)
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            clone.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
            clone.values = layer.values.expand(rows, *layer.values.shape[1:])
        forked.layers.append(clone)
    return forked


class _Runner:
    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.base_model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.seconds = 0.0  # inside model forwards: what the bench compares the engine's total with

    def _timed(self, call):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        clock = time.perf_counter()
        out = call()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - clock
        return out

    def extend(self, cache, tokens: list[int], start: int) -> None:
        """Run ``tokens`` at positions start.. on ``cache`` (one row; updated in place); no logits needed."""
        if not tokens:
            return
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(tokens), device=self.device)[None]
        self._timed(lambda: self.model.base_model(input_ids=ids, position_ids=positions, use_cache=True,
                                                  **{self.cache_kw: cache}))

    def logits(self, cache, ids: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + ids.shape[1], device=self.device)[None].expand(ids.shape[0], -1)
        return self._timed(lambda: self.model(input_ids=ids, position_ids=positions, use_cache=True,
                                              **{self.cache_kw: cache}).logits)


def kv_bytes_per_token(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    shape = model_shape(model)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or shape.num_heads
    element = next(model.parameters()).element_size()
    return 2 * shape.num_layers * int(kv_heads) * shape.head_dim * element


def rows_per_chunk(prefix_length: int, suffix_length: int, kv_per_token: int, vocab_size: int, logits_bytes: int,
                   max_batch_bytes: int) -> int:
    """The memory bound of the module docstring, solved for rows (at least 1)."""
    per_row = (prefix_length + suffix_length) * kv_per_token + suffix_length * vocab_size * logits_bytes
    return max(1, int(max_batch_bytes) // max(per_row, 1))


@torch.no_grad()
def score(model, pairs, points: list[Point], *, max_length: int, mc_positions: str = "answer",
          max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES, max_rows: int | None = None,
          softmax_dtype: torch.dtype | None = None, stats: dict | None = None,
          progress: bool = False) -> list[list[tuple[float, bool]]]:
    """[point][request] -> (loglikelihood, is_greedy), the numbers hf-iti returns for each request at each point.

    ``pairs``: (context_ids, continuation_ids) per request, as lm-eval builds them; ``max_length``: the lm-eval
    model's; ``max_batch_bytes`` / ``max_rows``: the memory bound (module docstring); ``softmax_dtype``: lm-eval's
    option of the same name (None: the logits' dtype); ``stats`` (a dict): filled with the forward counts;
    ``progress``: a progress bar over the prompts (each prompt's requests at every point)."""
    from tqdm.auto import tqdm

    if mc_positions not in MC_POSITIONS:
        raise ITIError(f"mc_positions={mc_positions!r} is not one of {', '.join(MC_POSITIONS)}")
    if not points:
        raise ITIError("the engine needs at least one (alpha, K) point")
    if max_batch_bytes <= 0 or (max_rows is not None and max_rows < 1):
        raise ITIError("max_batch_bytes and max_rows must be positive")
    owner = getattr(model, _OWNER_ATTRIBUTE, None)
    if owner is not None:
        raise ITIError("the model already has an ITI intervention installed; remove it before using the engine "
                       "(its shift would be added on top of every point's)")
    every = _requests(pairs, int(max_length), mc_positions)
    # identical requests (e.g. an MC1 choice that is also an MC2 choice of the same prompt) are scored once
    first_of: dict[tuple, int] = {}
    duplicate_of = [first_of.setdefault((tuple(r.tokens), tuple(r.continuation)), r.index) for r in every]
    requests = [r for r in every if duplicate_of[r.index] == r.index]
    results: list[list] = [[None] * len(every) for _ in points]
    # points that edit nothing (alpha 0, whatever K) have one set of numbers: scored once, copied
    unedited = [i for i, p in enumerate(points) if not p.vectors]
    scored = [i for i, p in enumerate(points) if p.vectors or i == (unedited[0] if unedited else -1)]
    counters = stats if stats is not None else {}
    counters.update(prefix_tokens=0, suffix_rows=0, suffix_tokens=0, batches=0, common_prefix=0,
                    prefixes=len({r.prefix for r in requests}), truncated=sum(r.truncated for r in requests),
                    requests=len(every), duplicates=len(every) - len(requests))
    layers = {layer for p in points for layer in p.vectors}
    hooks = RowShifts(model, layers)
    runner = _Runner(model)
    try:
        # answer / legacy: one unedited prefix pass shared by all points; all: one per point
        variants = [(None, scored)] if mc_positions != "all" else [(p, [p]) for p in scored]
        bar = tqdm(total=counters["prefixes"] * len(variants), disable=not progress, unit="prompt",
                   desc=f"engine: {len(every)} requests x {len(points)} point(s)")
        for prefix_point, point_ids in variants:
            _score_variant(runner, hooks, requests, points, prefix_point, point_ids, results, counters,
                           max_batch_bytes, max_rows, softmax_dtype, bar)
    finally:
        hooks.remove()
        if "bar" in locals():
            bar.close()
        counters["forward_seconds"] = runner.seconds
    for i in unedited[1:]:
        results[i] = list(results[unedited[0]])
    for point in results:
        for i, first in enumerate(duplicate_of):
            point[i] = point[first]
    for point, scored in zip(points, results):  # a NaN would win lm-eval's argmax: refuse it, as hf-iti does
        bad = next((i for i, r in enumerate(scored) if not math.isfinite(float(r[0]))), None)
        if bad is not None:
            raise ITIError(f"engine: the loglikelihood of request {bad} is NaN or infinite at alpha={point.alpha:g}: "
                           "the shift overflows the model's dtype; use a smaller alpha")
    return results


def _score_variant(runner, hooks, requests, points, prefix_point, point_ids, results, counters, max_batch_bytes,
                   max_rows, softmax_dtype, bar):
    model = runner.model
    prefix_vectors = [points[prefix_point].vectors] if prefix_point is not None else [{}]

    def run_prefix(cache, tokens, start):
        hooks.set(prefix_vectors, torch.ones(1, len(tokens), dtype=torch.bool) if prefix_vectors[0] else None)
        try:
            runner.extend(cache, tokens, start)
        finally:
            hooks.set([], None)
        counters["prefix_tokens"] += len(tokens)

    groups: dict[tuple[int, ...], list[_Request]] = {}
    for r in requests:
        groups.setdefault(r.prefix, []).append(r)
    kv_per_token = kv_bytes_per_token(model)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    logits_bytes = 4 if softmax_dtype is None else torch.finfo(softmax_dtype).bits // 8
    logits_bytes = max(logits_bytes, next(model.parameters()).element_size())
    for shared_length, prefixes in prefix_clusters(list(groups)):
        shared = list(prefixes[0][:shared_length])
        common = None
        if shared and len(prefixes) > 1:
            common = _new_cache(model)
            run_prefix(common, shared, 0)
            counters["common_prefix"] = max(counters["common_prefix"], len(shared))
        for prefix in prefixes:
            if common is not None:
                cache = _fork(common)
                run_prefix(cache, list(prefix[len(shared):]), len(shared))
            else:
                cache = _new_cache(model)
                run_prefix(cache, list(prefix), 0)
            _score_group(runner, hooks, cache, prefix, groups[prefix], points, point_ids, results, counters,
                         kv_per_token, vocab, logits_bytes, max_batch_bytes, max_rows, softmax_dtype)
            bar.update(1)


def _score_group(runner, hooks, cache, prefix, members, points, point_ids, results, counters, kv_per_token, vocab,
                 logits_bytes, max_batch_bytes, max_rows, softmax_dtype):
    rows = sorted(((r, p) for r in members for p in point_ids), key=lambda row: -(len(row[0].tokens) - row[0].start))
    for chunk in chunk_rows([len(r.tokens) - r.start for r, _ in rows], len(prefix), kv_per_token, vocab,
                            logits_bytes, max_batch_bytes, max_rows):
        _score_rows(runner, hooks, cache, len(prefix), [rows[i] for i in chunk], points, results, counters,
                    softmax_dtype)


PADDING_LIMIT = 0.25  # a chunk's right padding stays below this share of its tokens (rows sorted longest first)


def chunk_rows(lengths: list[int], prefix_length: int, kv_per_token: int, vocab: int, logits_bytes: int,
               max_batch_bytes: int, max_rows: int | None) -> list[list[int]]:
    """Consecutive chunks of row indices (``lengths`` sorted longest first): each within the memory bound for its
    width (its first row's length) and ``max_rows``, and padded by less than ``PADDING_LIMIT`` of its tokens."""
    chunks, begin = [], 0
    while begin < len(lengths):
        width = lengths[begin]
        limit = rows_per_chunk(prefix_length, width, kv_per_token, vocab, logits_bytes, max_batch_bytes)
        if max_rows is not None:
            limit = min(limit, max_rows)
        end, real = begin + 1, width
        while end < len(lengths) and end - begin < limit and \
                real + lengths[end] >= (1 - PADDING_LIMIT) * (end - begin + 1) * width:
            real += lengths[end]
            end += 1
        chunks.append(list(range(begin, end)))
        begin = end
    return chunks


def _score_rows(runner, hooks, cache, prefix_length, rows, points, results, counters, softmax_dtype):
    width = max(len(r.tokens) - r.start for r, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for row, (r, _) in enumerate(rows):
        suffix = r.tokens[r.start:]
        ids[row, :len(suffix)] = torch.tensor(suffix)
        # through the right padding too: padded positions are never attended to by real ones (causal) and their
        # logits are not read, so editing them is harmless and keeps the all-positions fast path in ``answer``
        mask[row, max(r.edit_from - r.start, 0):] = True
    row_vectors = [points[p].vectors for _, p in rows]
    batch_cache = _fork(cache, len(rows)) if prefix_length else _new_cache(runner.model)
    hooks.set(row_vectors, mask if any(row_vectors) else None)
    try:
        logits = runner.logits(batch_cache, ids.to(runner.device), prefix_length)
    finally:
        hooks.set([], None)
    counters["batches"] += 1
    counters["suffix_rows"] += len(rows)
    counters["suffix_tokens"] += sum(len(r.tokens) - r.start for r, _ in rows)
    # lm-eval: log_softmax over the vocabulary (in softmax_dtype), gather, sum in that dtype, greedy = all argmax
    logprobs = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
    for row, (r, p) in enumerate(rows):
        x = len(r.continuation)
        row_logprobs = logprobs[row, :x].unsqueeze(0)
        target = torch.tensor(r.continuation, dtype=torch.long, device=row_logprobs.device).unsqueeze(0)
        greedy = bool((row_logprobs.argmax(dim=-1) == target).all())
        picked = torch.gather(row_logprobs, 2, target.unsqueeze(-1)).squeeze(-1)
        results[p][r.index] = (float(picked.sum()), greedy)
