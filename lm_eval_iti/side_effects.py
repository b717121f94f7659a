"""Side effects of an intervention on ordinary text: cross-entropy (CE) of the base and the steered model and the
per-token KL(base || steered), on the SAME documents in one pass (each batch goes through the model with hooks off,
then with hooks on).

Definitions (iti-method.md §11, the reference's ``run_ce_loss`` / ``run_kl_wrt_orig``, without their flaws):
  CE of a document  = mean over its next-token predictions (positions 0..n-2 predict tokens 1..n-1) of -log p;
                      this is Hugging Face's ``loss`` with ``labels=input_ids``.
  KL of a document  = mean over all of its n positions of sum_v p_base(v) log(p_base(v) / p_steered(v)), in nats,
                      computed exactly from log-softmax in float32 (the reference clamps probabilities at 1e-10).
  reported values   = means over documents of the per-document values (the reference's mean of per-doc means).
Every position is edited (what hf-iti does for ``loglikelihood_rolling``). The corpus: N paragraphs of >= 100 words
sampled with a fixed seed from the WikiText-2 raw test split (hub ``Salesforce/wikitext``, or a local raw file),
heading lines `` = ... = `` dropped, each cut to its first T tokens. Not comparable with the published OpenWebText
numbers.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .options import default_of
from .errors import ITIError
from .loading import execution_device

HUB_CORPUS = {"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1", "split": "test"}
DEFAULT_CORPUS = default_of("corpus")
DEFAULT_NUM_DOCS = default_of("num_docs")
DEFAULT_NUM_TOKENS = default_of("num_tokens")
MIN_WORDS = 100

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


# corpus ------------------------------------------------------------------------------------------------------------
def is_heading(line: str) -> bool:
    """WikiText headings look like `` = Title = `` or `` = = Section = = ``."""
    text = line.strip()
    return len(text) >= 2 and text.startswith("=") and text.endswith("=")


def paragraphs(lines, min_words: int = MIN_WORDS) -> list[str]:
    """Non-heading lines with at least ``min_words`` whitespace-separated words, stripped, in order."""
    out = []
    for line in lines:
        text = line.strip()
        if text and not is_heading(text) and len(text.split()) >= min_words:
            out.append(text)
    return out


# lm-eval 0.4's WikiText detokeniser (lm_eval/tasks/wikitext/preprocess_wikitext.py, MIT), step for step. It lives
# here, not in harness/, so that the CE/KL maths stays below the lm-eval glue in the import graph (fit's alpha auto
# needs it); tests/test_side_effects.py checks it against lm-eval's own function on the whole WikiText-2 test split.
_DETOKENIZE_STEPS = (
    ("replace", "s '", "s'"), ("sub", r"/' [0-9]/", r"/'[0-9]/"),
    ("replace", " @-@ ", "-"), ("replace", " @,@ ", ","), ("replace", " @.@ ", "."),
    ("replace", " : ", ": "), ("replace", " ; ", "; "), ("replace", " . ", ". "), ("replace", " ! ", "! "),
    ("replace", " ? ", "? "), ("replace", " , ", ", "),
    ("sub", r"\(\s*([^\)]*?)\s*\)", r"(\1)"), ("sub", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("sub", r"{\s*([^}]*?)\s*}", r"{\1}"), ("sub", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("sub", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("replace", "= = = =", "===="), ("replace", "= = =", "==="), ("replace", "= =", "=="),
    ("replace", " " + chr(176) + " ", chr(176)), ("replace", " \n", "\n"), ("replace", "\n ", "\n"),
    ("replace", " N ", " 1 "), ("replace", " 's", "'s"),
)


def detokenize(text: str) -> str:
    """lm-eval's WikiText detokeniser (`` @-@ `` -> ``-``, spaces before punctuation, ...)."""
    import re

    for kind, old, new in _DETOKENIZE_STEPS:
        text = text.replace(old, new) if kind == "replace" else re.sub(old, new, text)
    return text


@dataclass
class Corpus:
    texts: list[str]
    info: dict = field(default_factory=dict)


def _read_lines(source: str) -> tuple[list[str], dict]:
    if source == DEFAULT_CORPUS:
        try:
            from datasets import load_dataset

            rows = load_dataset(HUB_CORPUS["path"], HUB_CORPUS["name"], split=HUB_CORPUS["split"])["text"]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ITIError(f"corpus=wikitext: could not load {HUB_CORPUS['path']} {HUB_CORPUS['name']} "
                           f"({type(exc).__name__}: {first}); pass corpus=PATH to a local wikitext-2-raw-v1.test.raw"
                           ) from None
        return list(rows), {"source": f"hub:{HUB_CORPUS['path']}/{HUB_CORPUS['name']}/{HUB_CORPUS['split']}"}
    path = Path(source).expanduser()
    if not path.is_file():
        raise ITIError(f"corpus={source}: no such file (give a raw text file, or 'wikitext' for the hub split)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ITIError(f"corpus={source}: not UTF-8 text") from None
    return text.splitlines(), {"source": str(path), "sha256": hashlib.sha256(raw).hexdigest()}


def load_corpus(source: str = DEFAULT_CORPUS, num_docs: int = DEFAULT_NUM_DOCS, seed: int = 0,
                min_words: int = MIN_WORDS, detokenized: bool = True, exclude: frozenset[int] = frozenset()) -> Corpus:
    """``num_docs`` paragraphs sampled without replacement with ``seed`` (in sampled order), never one in ``exclude``
    (paragraph indices)."""
    if num_docs < 1:
        raise ITIError(f"num_docs={num_docs} must be at least 1")
    lines, info = _read_lines(str(source))
    pool = paragraphs(lines, min_words)
    allowed = [i for i in range(len(pool)) if i not in exclude]
    if len(allowed) < num_docs:
        left = f" ({len(pool) - len(allowed)} set aside)" if exclude else ""
        raise ITIError(f"corpus={source}: only {len(allowed)} paragraphs of >= {min_words} words{left}, fewer "
                       f"than num_docs={num_docs}")
    picked = [allowed[i] for i in np.random.default_rng(seed).choice(len(allowed), size=num_docs, replace=False)]
    texts = [pool[i] for i in picked]
    if detokenized:
        texts = [detokenize(t) for t in texts]
    info.update({"paragraphs_available": len(pool), "min_words": min_words, "num_docs": num_docs, "seed": seed,
                 "headings_dropped": True, "paragraph_indices": picked,
                 "detokenized": "lm-eval wikitext_detokenizer" if detokenized else "no (raw WikiText tokens)"})
    return Corpus(texts, info)


def tokenize_docs(tokenizer, texts: list[str], num_tokens: int = DEFAULT_NUM_TOKENS) -> list[list[int]]:
    """The first ``num_tokens`` tokens of each text, with the tokenizer's special tokens (BOS where it adds one)."""
    if num_tokens < 2:
        raise ITIError(f"num_tokens={num_tokens} must be at least 2 (CE needs a next token)")
    docs = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:num_tokens]
        if len(ids) < 2:
            raise ITIError(f"a corpus document has fewer than 2 tokens: {text[:60]!r}")
        docs.append(list(ids))
    return docs


def check_options(num_docs: int, num_tokens: int, batch_size: int = 1) -> None:
    """Everything checkable before a model is loaded."""
    if num_docs < 1:
        raise ITIError(f"num_docs={num_docs} must be at least 1")
    if num_tokens < 2:
        raise ITIError(f"num_tokens={num_tokens} must be at least 2 (CE needs a next token)")
    if batch_size < 1:
        raise ITIError(f"batch_size={batch_size} must be at least 1")


# the math (pure, on tensors) ---------------------------------------------------------------------------------------
def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def doc_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] mean next-token NLL per document; logits [B, T, V], rows right-padded beyond ``lengths``."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
    valid = _valid(lengths - 1, nll.shape[1])
    return (nll * valid).sum(1) / valid.sum(1)


def doc_kl(base_logits: torch.Tensor, steered_logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] mean over each document's positions of KL(base || steered) in nats."""
    logp = torch.log_softmax(base_logits.float(), dim=-1)
    logq = torch.log_softmax(steered_logits.float(), dim=-1)
    per_position = (logp.exp() * (logp - logq)).sum(-1)  # [B, T]
    valid = _valid(lengths, per_position.shape[1])
    return (per_position * valid).sum(1) / valid.sum(1)


# one pass over the documents ---------------------------------------------------------------------------------------
def right_padded(batch: list[list[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids [B, T] right-padded with 0, lengths [B]) of token documents, on ``device`` if given."""
    ids = torch.zeros(len(batch), max(len(d) for d in batch), dtype=torch.long)
    for row, d in enumerate(batch):
        ids[row, :len(d)] = torch.tensor(d, dtype=torch.long)
    lengths = torch.tensor([len(d) for d in batch])
    if device is not None:
        ids, lengths = ids.to(device), lengths.to(device)
    return ids, lengths


@torch.no_grad()
def measure(base_logits: LogitsFn, steered_logits: LogitsFn, docs: list[list[int]], batch_size: int = 8,
            device=None, progress: bool = False, desc: str = "CE/KL", base_cache: dict | None = None) -> dict:
    """CE of both models and KL(base || steered) on the same token documents, batch by batch (hooks off, then on).

    ``base_logits`` / ``steered_logits`` map input ids [B, T] (right-padded with 0) to logits [B, T, V].
    ``base_cache``: a dict kept by the caller across calls with the same unedited model, so the base logits of a
    batch are computed once per run (filled up to BASE_LOGITS_BYTES; a batch whose ids differ is recomputed)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ITIError(f"batch_size={batch_size} must be at least 1")
    ce_base, ce_steered, kl = [], [], []
    starts = range(0, len(docs), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        ids, lengths = right_padded(docs[start:start + batch_size], device)
        cached = base_cache.get(start) if base_cache is not None else None
        if cached is not None and cached[0].shape == ids.shape and cached[0].equal(ids):
            base = cached[1]
        else:
            base = base_logits(ids)
            if base_cache is not None and base.numel() * base.element_size() + base_cache.get("bytes", 0) <= \
                    BASE_LOGITS_BYTES:
                base_cache[start] = (ids, base)
                base_cache["bytes"] = base_cache.get("bytes", 0) + base.numel() * base.element_size()
        steered = steered_logits(ids)
        ce_base += doc_cross_entropy(base, ids, lengths).tolist()
        ce_steered += doc_cross_entropy(steered, ids, lengths).tolist()
        kl += doc_kl(base, steered, lengths).tolist()
        del base, steered
    for name, values in (("CE of the base model", ce_base), ("CE of the steered model", ce_steered), ("KL", kl)):
        if not np.isfinite(values).all():  # a NaN would print, be written to JSON and pass as a measurement
            raise ITIError(f"{desc}: {name} is NaN or infinite on {int((~np.isfinite(values)).sum())} of "
                           f"{len(values)} documents; the shift overflows the model's dtype (use a smaller alpha)")
    return {"ce_base": float(np.mean(ce_base)), "ce_steered": float(np.mean(ce_steered)), "kl": float(np.mean(kl)),
            "num_docs": len(docs), "num_tokens": sum(len(d) for d in docs),
            "tokens_per_doc": {"min": min(len(d) for d in docs), "max": max(len(d) for d in docs)},
            "per_doc": {"ce_base": ce_base, "ce_steered": ce_steered, "kl": kl}}


def model_logits(model) -> LogitsFn:
    """Plain forward of a causal LM (no attention mask: rows are right-padded, so real positions never see pads)."""
    return lambda ids: model(input_ids=ids).logits


def hooked_logits(model, intervener) -> tuple[LogitsFn, LogitsFn]:
    """(hooks off, hooks on at every position) on one model with an installed ``Intervener``."""
    from .intervene import ALL

    def base(ids):
        with intervener.editing(None):
            return model(input_ids=ids).logits

    def steered(ids):
        with intervener.editing(ALL):
            return model(input_ids=ids).logits

    return base, steered


def lm_eval_logits(lm) -> LogitsFn:
    """The forward of an lm-eval HFLM (e.g. lm-eval's ``steered`` model, whose hooks live in ``_model_call``)."""
    return lambda ids: lm._model_call(ids)


def corpus_docs(tokenizer, corpus: str = DEFAULT_CORPUS, num_docs: int = DEFAULT_NUM_DOCS,
                num_tokens: int = DEFAULT_NUM_TOKENS, seed: int = 0, detokenized: bool = True,
                exclude: frozenset[int] = frozenset()) -> tuple[list[list[int]], dict]:
    """Token documents and a description of how they were made (recorded with every CE/KL number)."""
    loaded = load_corpus(corpus, num_docs, seed, detokenized=detokenized, exclude=exclude)
    docs = tokenize_docs(tokenizer, loaded.texts, num_tokens)
    info = dict(loaded.info, num_tokens=num_tokens, bos_added=bool(
        getattr(tokenizer, "bos_token_id", None) is not None and docs[0][0] == tokenizer.bos_token_id),
        positions_edited="all", ce="mean over docs of the per-doc mean next-token NLL",
        kl="mean over docs of the per-doc mean over positions of KL(base || steered), nats")
    return docs, info


def side_effects(model, tokenizer, directions, alpha: float | None = None, heads: int | None = None,
                 corpus: str = DEFAULT_CORPUS, num_docs: int = DEFAULT_NUM_DOCS,
                 num_tokens: int = DEFAULT_NUM_TOKENS, seed: int = 0, detokenized: bool = True, batch_size: int = 8,
                 progress: bool = True, allow_model_mismatch: bool = False) -> dict:
    """CE (base, steered) and KL(base || steered) of ``directions`` at ``alpha`` (default: the file's) on ``model``.

    ``directions``: a Directions object or a path. Hooks are installed for the call and removed afterwards."""
    from .architectures import model_shape
    from .artifact import Directions, file_sha256, load_directions
    from .identity import check_model_identity
    from .intervene import Intervener

    info: dict = {}
    if not isinstance(directions, Directions):
        info["directions"] = str(directions)
        info["directions_sha256"] = file_sha256(directions)
        directions = load_directions(directions, expect=model_shape(model))
    info["model_check"] = check_model_identity(directions, model, allow_model_mismatch)
    if heads:
        directions = directions.top_k(int(heads))
    alpha = directions.alpha if alpha is None else float(alpha)
    docs, corpus_info = corpus_docs(tokenizer, corpus, num_docs, num_tokens, seed, detokenized)
    intervener = Intervener(model, directions, alpha).install()
    try:
        base, steered = hooked_logits(model, intervener)
        device = execution_device(model)
        result = measure(base, steered, docs, batch_size, device=device, progress=progress,
                         desc=f"CE/KL alpha={alpha:g}")
    finally:
        intervener.remove()
    info.update(alpha=alpha, num_heads_used=directions.num_selected, positions="all")
    return {"side_effects": {k: v for k, v in result.items() if k != "per_doc"}, "per_doc": result["per_doc"],
            "intervention": info, "corpus": corpus_info}


def write_side_effects(result: dict, out: str | os.PathLike) -> Path:
    from .atomic import write_json_atomic

    target = Path(out)
    if target.is_dir():
        raise ITIError(f"out={out}: is a folder; give a file name such as side_effects.json")
    write_json_atomic(target, result)
    return target


# alpha by side-effect budget -----------------------------------------------------------------------------------------
# The ITI paper's LLaMA-7B operating point (alpha 15, K 48) cost KL 0.17 nats/token: a budget of 0.2 allows about that.
DEFAULT_KL_BUDGET = default_of("kl_budget")
DEFAULT_ALPHA_GRID = (0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40)
AUTO_NUM_DOCS = 32  # the KL sample of alpha auto and select: held out from the CE/KL documents
AUTO_SEED = 1
# keep the base logits of every document when they fit in this many bytes (else recompute them per alpha)
BASE_LOGITS_BYTES = 2 * 1024 ** 3


def check_kl_corpus(corpus: str, option: str = "corpus", held_out_from: tuple[int, int] = (DEFAULT_NUM_DOCS, 0)) -> None:
    """Before any model loads: the KL sample needs paragraphs beside the side-effects sample (``KLMeter``); errors
    name ``option``, the caller's spelling of the corpus."""
    try:
        reported = load_corpus(corpus, *held_out_from, detokenized=False)
    except ITIError as exc:
        raise ITIError(str(exc).replace("corpus=", f"{option}=")) from None
    if reported.info["paragraphs_available"] <= held_out_from[0]:
        raise ITIError(f"{option}={corpus}: {reported.info['paragraphs_available']} paragraphs of >= {MIN_WORDS} words; "
                       f"the KL sample needs more than the {held_out_from[0]} of the side-effects sample")


class KLMeter:
    """KL(base || steered) in nats/token of any (directions, alpha) on one fixed held-out text sample.

    The sample is ``num_docs`` paragraphs (fewer if the corpus has fewer left) that are not in the side-effects
    sample ``held_out_from`` = (num_docs, seed) the results report; every position is edited; the unsteered logits are
    computed once and kept (up to BASE_LOGITS_BYTES), so each further measurement costs one steered pass."""

    def __init__(self, model, tokenizer, corpus: str = DEFAULT_CORPUS, num_docs: int = AUTO_NUM_DOCS,
                 num_tokens: int = DEFAULT_NUM_TOKENS, seed: int = AUTO_SEED, batch_size: int = 8,
                 held_out_from: tuple[int, int] = (DEFAULT_NUM_DOCS, 0), what: str = "alpha auto"):
        reported = load_corpus(corpus, *held_out_from)
        held_out = frozenset(reported.info["paragraph_indices"])
        num_docs = min(num_docs, reported.info["paragraphs_available"] - len(held_out))
        if num_docs < 1:
            raise ITIError(f"{what}: corpus {corpus} has no paragraph left beside the {len(held_out)} of the "
                           "side-effects sample")
        docs, self.corpus_info = corpus_docs(tokenizer, corpus, num_docs, num_tokens, seed, exclude=held_out)
        self.model = model
        self.held_out_from = held_out_from
        self.device = execution_device(model)
        self.batches = [docs[i:i + batch_size] for i in range(0, len(docs), batch_size)]
        vocab = model.get_output_embeddings().weight.shape[0]
        self.keep_base = sum(len(d) for d in docs) * vocab * 4 <= BASE_LOGITS_BYTES
        self.base_cache: dict[int, torch.Tensor] = {}

    def _base_logits(self, i, ids):
        if i in self.base_cache:
            return self.base_cache[i]
        logits = self.model(input_ids=ids).logits
        if self.keep_base:
            self.base_cache[i] = logits
        return logits

    @torch.no_grad()
    def __call__(self, directions, alpha: float) -> float:
        from .intervene import Intervener

        if float(alpha) == 0.0:
            return 0.0
        intervener = Intervener(self.model, directions, float(alpha))
        steered_fn = hooked_logits(self.model, intervener.install())[1]
        try:
            kls = []
            for i, batch in enumerate(self.batches):
                ids, lengths = right_padded(batch, self.device)
                kls += doc_kl(self._base_logits(i, ids), steered_fn(ids), lengths).tolist()
        finally:
            intervener.remove()
        return float(np.mean(kls))

    def describe(self) -> dict:
        return {"corpus": {k: v for k, v in self.corpus_info.items() if k != "paragraph_indices"},
                "held_out_from": f"the side-effects sample ({self.held_out_from[0]} docs, seed "
                                 f"{self.held_out_from[1]})"}


@torch.no_grad()
def alpha_for_kl_budget(model, tokenizer, directions, kl_budget: float = DEFAULT_KL_BUDGET,
                        grid=DEFAULT_ALPHA_GRID, corpus: str = DEFAULT_CORPUS, num_docs: int = AUTO_NUM_DOCS,
                        num_tokens: int = DEFAULT_NUM_TOKENS, seed: int = AUTO_SEED, batch_size: int = 8,
                        progress: bool = True, held_out_from: tuple[int, int] = (DEFAULT_NUM_DOCS, 0),
                        meter: KLMeter | None = None) -> dict:
    """The largest alpha of ``grid`` whose KL(base || steered) stays within ``kl_budget`` (nats/token).

    Alphas are tried in increasing order and the scan stops at the first one over budget (KL grows with alpha), so
    the next grid value above the choice is over budget. KL is measured by a ``KLMeter`` (every position edited, on
    paragraphs that are not in the side-effects sample the results report). Returns the choice and every measurement.
    """
    from tqdm.auto import tqdm

    if not (kl_budget > 0):
        raise ITIError(f"kl_budget {kl_budget} must be positive")
    grid = sorted({float(a) for a in grid})
    if not grid or grid[0] <= 0:
        raise ITIError("alpha grid: give positive strengths")
    if meter is None:
        meter = KLMeter(model, tokenizer, corpus, num_docs, num_tokens, seed, batch_size, held_out_from)
    measured, chosen = [], None
    for alpha in tqdm(grid, desc=f"alpha auto (KL <= {kl_budget:g})", disable=not progress):
        kl = meter(directions, alpha)
        measured.append({"alpha": alpha, "kl": kl})
        if kl > kl_budget:
            break
        chosen = alpha
    if chosen is None:
        raise ITIError(f"alpha auto: even the smallest alpha {grid[0]:g} costs KL {measured[0]['kl']:.3g} > budget "
                       f"{kl_budget:g} nats/token; raise the budget or use fewer heads")
    return {"alpha": chosen, "kl_budget": kl_budget, "grid": grid, "measured": measured,
            "rule": "largest grid alpha with KL(base||steered) <= budget, scanning upward until the first over budget",
            **meter.describe()}


def alpha_for_kl_target(meter: KLMeter, directions, target_kl: float, start: float = 1.0, tolerance: float = 0.02,
                        max_steps: int = 24) -> dict:
    """The alpha at which ``directions`` cost ``target_kl`` nats/token on ``meter``'s sample (a control matched in
    side effects rather than in size). KL grows with alpha, about as alpha^2 for small shifts, so each step is a
    secant on log KL against log alpha (the first with slope 2) inside the bracket found so far, falling back to
    bisection when the secant leaves it; stops within ``tolerance`` (relative) of the target. Usually 2-4
    measurements; every one is returned."""
    if not (target_kl > 0):
        raise ITIError(f"target_kl={target_kl}: a KL-matched control needs a positive KL to match")
    if not (start > 0):
        raise ITIError(f"start={start} must be positive")
    measured: list[dict] = []

    def kl_at(alpha):
        kl = meter(directions, alpha)
        measured.append({"alpha": alpha, "kl": kl})
        return kl

    def close(m):
        return abs(m["kl"] - target_kl) <= tolerance * target_kl

    low, high = 0.0, math.inf  # the bracket: KL(low) < target <= KL(high)
    alpha, previous = float(start), None
    while len(measured) < max_steps:
        kl = kl_at(alpha)
        if close(measured[-1]):
            break
        if kl < target_kl:
            low = max(low, alpha)
        else:
            high = min(high, alpha)
        slope = 2.0
        if kl > 0 and previous is not None and previous[1] > 0 and previous[0] != alpha:
            slope = (math.log(kl) - math.log(previous[1])) / (math.log(alpha) - math.log(previous[0]))
        guess = None
        if kl > 0 and 0.25 <= slope <= 8:  # a usable local power law
            guess = min(max(alpha * (target_kl / kl) ** (1 / slope), alpha / 8), alpha * 8)
        margin = 0.05 * (high - low) if math.isfinite(high) else 0.0
        if guess is None or not low + margin < guess < high - margin:  # bisect the bracket, or grow until it closes
            guess = (low + high) / 2 if math.isfinite(high) else max(alpha, low) * 2
        previous, alpha = (alpha, kl), guess
    best = min(measured, key=lambda m: abs(m["kl"] - target_kl))
    if not close(best) and not math.isfinite(high):
        raise ITIError(f"KL-matched control: KL reached only {max(m['kl'] for m in measured):.3g} at alpha "
                       f"{max(m['alpha'] for m in measured):g}, below the target {target_kl:.3g}")
    return {"alpha": best["alpha"], "kl": best["kl"], "target_kl": target_kl, "tolerance": tolerance,
            "within_tolerance": close(best), "measured": measured,
            "rule": "secant on log KL vs log alpha inside the bracket, else bisection", **meter.describe()}
