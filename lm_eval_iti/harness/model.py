"""The ``hf-iti`` lm-eval model: HFLM plus ITI head-wise shifts. The only lm-eval model glue in the package.

Positions edited (see ``intervene.py`` for the mechanism):
  loglikelihood, ``mc_positions=answer`` (default): for a request of C context and X continuation tokens, the
  positions C-1 .. C+X-2 of the input (context+continuation without its last token), exactly those whose logits
  score the continuation; ``all``: every position; ``legacy``: from the second answer token on (what the reference's
  baukit code effectively did with the Llama tokenizer: answer tokens 1 and 2 are scored unedited).
  loglikelihood_rolling: every position.
  generation, ``gen_positions=last`` (default, the original ITI convention): the last prompt position, then every
  generated token; ``generated``: generated tokens only; ``all``: every prompt position and every generated token
  (what a baked bias does). Positions are absolute (the prompt may come in chunks); decoding that verifies several
  candidate tokens per forward is refused.
Under hf-iti the truthfulqa_iti_* tasks refuse questions the directions were fitted on
(``taskfns.guard_fit_questions``).
"""

from __future__ import annotations

import logging
import math
import os

import torch
from lm_eval.models.huggingface import HFLM

from ..architectures import model_shape
from ..artifact import Directions, file_sha256, load_directions, validate
from ..errors import ITIError
from ..gguf import hflm_model_args
from ..identity import check_model_identity
from ..loading import check_device, check_model_source
from ..intervene import ALL, GEN_POSITIONS, MC_POSITIONS, Intervener, answer_mask
from ..model_args import num_heads_arg, parse_alpha, parse_bool
from ..options import default_of

log = logging.getLogger(__name__)


def check_identity(directions, identity: str | None) -> None:
    """Warn when the directions were fitted on a different GGUF file than the one loaded (same geometry)."""
    fitted = directions.metadata.get("model_identity", "")
    if identity and fitted.startswith("gguf:") and fitted != identity:
        log.warning(f"lm-eval-iti: the directions were fitted on {fitted}, but the loaded GGUF is {identity}")


def check_options(directions, mc_positions: str, gen_positions: str) -> None:
    """Everything checkable before the model is loaded, so bad input fails fast."""
    if directions is None or directions == "":
        raise ITIError("hf-iti needs directions: a directions .safetensors path (model_args directions=PATH) or a "
                       "Directions object")
    if not isinstance(directions, Directions) and not os.path.isfile(str(directions)):
        raise ITIError(f"{directions}: directions file not found")
    if mc_positions not in MC_POSITIONS:
        raise ITIError(f"mc_positions={mc_positions!r} is not one of {', '.join(MC_POSITIONS)}")
    if gen_positions not in GEN_POSITIONS:
        raise ITIError(f"gen_positions={gen_positions!r} is not one of {', '.join(GEN_POSITIONS)}")


# dtype names HFLM passes to getattr(torch, name): the floating dtypes a model can run in
MODEL_DTYPES = ("auto", "float32", "float", "float16", "half", "bfloat16", "float64", "double")


def check_model_args(pretrained, gguf_file, kwargs: dict) -> None:
    """What lm-eval and transformers would otherwise fail on with a traceback, checked before anything loads:
    dtype, device, and a pretrained= that names no folder, file or cached hub model."""
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype not in MODEL_DTYPES:
        raise ITIError(f"dtype={dtype!r} is not one of {', '.join(MODEL_DTYPES)}")
    if isinstance(kwargs.get("device"), str):
        check_device(kwargs["device"])
    if isinstance(pretrained, (str, os.PathLike)):
        check_model_source(str(pretrained), gguf_file, kwargs.get("revision"), what="pretrained=")


def non_finite_message(alpha: float, source: str, where: str) -> str:
    return (f"hf-iti: the steered model's log-probabilities are NaN or infinite ({where}; alpha={alpha:g}, "
            f"directions {source}): the shift overflows the model's dtype; use a smaller alpha")


def unknown_key_error(exc: TypeError) -> ITIError | None:
    """transformers passes model_args it does not know to the model class, which raises TypeError before any weight
    is read: one line naming the key."""
    import re

    found = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if found is None:
        return None
    return ITIError(f"model_args key {found.group(1)}= is known to neither hf-iti, lm-eval's HFLM nor transformers' "
                    "from_pretrained (hf-iti's own: directions, alpha, heads, mc_positions, gen_positions, gguf_file, "
                    "gguf_cache, allow_model_mismatch)")


# Decoding strategies whose forwards are the prompt (whole or in prefill_chunk_size chunks), then one new token per
# row per step: the only ones hf-iti can place edits in by absolute position.
SUPPORTED_GENERATION_MODES = ("greedy_search", "sample", "beam_search", "beam_sample")


def check_generation_mode(model, generation_kwargs: dict) -> None:
    """Refuse decoding strategies that feed candidate tokens in one forward (assisted, prompt lookup, MTP) or that
    run custom code, before anything is generated."""
    import copy

    if generation_kwargs.get("custom_generate") is not None:
        raise ITIError("hf-iti cannot steer custom_generate decoding (its forwards are unknown); drop custom_generate")
    config = copy.deepcopy(generation_kwargs.get("generation_config") or model.generation_config)
    config.update(**{k: v for k, v in generation_kwargs.items() if k not in ("generation_config", "assistant_model")})
    mode = str(getattr(config.get_generation_mode(generation_kwargs.get("assistant_model")), "value", ""))
    if mode not in SUPPORTED_GENERATION_MODES:
        raise ITIError(f"hf-iti cannot steer {mode or 'this'} decoding: it places edits by absolute position, one new "
                       "token per step (assistant_model, prompt_lookup_num_tokens and multi-token prediction verify "
                       f"several in one forward); supported: {', '.join(SUPPORTED_GENERATION_MODES)}")


def fit_split_info(d) -> dict:
    """The fit's question split as recorded in the directions file (None where it does not say): with these the
    results tell which questions the directions saw."""
    meta = d.metadata

    def number(key):
        return int(meta[key]) if meta.get(key, "") != "" else None

    import hashlib
    import json

    ids = meta.get("train_question_ids")
    digest = meta.get("train_question_ids_sha256")
    if digest is None and ids is not None:
        digest = hashlib.sha256(ids.encode("utf-8")).hexdigest()
    return {"fold": number("fold"), "num_folds": number("num_folds"), "fold_seed": number("seed"),
            "contiguous_folds": meta.get("contiguous_folds") == "true",
            "train_question_ids_sha256": digest,
            "num_train_questions": None if ids is None else len(json.loads(ids))}


def _key(tokens) -> bytes:
    return torch.as_tensor(tokens, dtype=torch.int64).numpy().tobytes()


def _strip_zeros(tokens: list[int]) -> list[int]:
    """Without trailing zeros: lm-eval's right padding, and any real trailing tokens of id 0."""
    last = len(tokens)
    while last > 0 and tokens[last - 1] == 0:
        last -= 1
    return tokens[:last]


class HFITI(HFLM):
    """``--model hf-iti --model_args pretrained=...,directions=FILE[,alpha=15][,num_heads=K][,mc_positions=...][,gen_positions=...]``

    From Python, ``pretrained`` may also be a loaded model (with ``tokenizer=``, as for HFLM) and ``directions`` a
    ``Directions`` object; its ``iti_info`` then records no file and no sha256 (there is no file to hash)."""

    def __init__(self, pretrained="", directions: "str | os.PathLike | Directions | None" = None, alpha=None, num_heads=None,
                 mc_positions: str = default_of("mc_positions"), gen_positions: str = default_of("gen_positions"),
                 heads=None, gguf_file: str | None = None,
                 gguf_cache=True, allow_model_mismatch=False, **kwargs):
        from .plugin import ensure_registered

        ensure_registered()  # the packaged tasks, for Python programs where the .pth autoload did not run
        check_options(directions, mc_positions, gen_positions)
        alpha_value = parse_alpha(alpha)
        k = num_heads_arg(num_heads, heads)
        allow_mismatch = parse_bool(allow_model_mismatch)
        check_model_args(pretrained, gguf_file, kwargs)
        pretrained, gguf_file, self.model_identity = hflm_model_args(pretrained, gguf_file, parse_bool(gguf_cache))
        try:
            super().__init__(pretrained=pretrained, gguf_file=gguf_file, **kwargs)
        except TypeError as exc:
            raise (unknown_key_error(exc) or exc) from None
        except OSError as exc:  # transformers' "not found / cannot connect" for a hub id
            first = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ITIError(f"pretrained={pretrained}: cannot load it ({first})") from None
        shape = model_shape(self.model)
        if isinstance(directions, Directions):
            loaded = validate(directions, expect=shape)
            self.directions_path = self.directions_sha256 = None
        else:
            loaded = load_directions(directions, expect=shape)
            self.directions_path = str(directions)
            self.directions_sha256 = file_sha256(directions)
        check_identity(loaded, self.model_identity)
        self.model_check = check_model_identity(loaded, self.model, allow_mismatch,
                                                override="the model_arg allow_model_mismatch=true")
        self.directions = loaded.top_k(k) if k else loaded
        self.alpha = loaded.alpha if alpha_value is None else alpha_value
        self.mc_positions = mc_positions
        self.gen_positions = gen_positions
        self.intervener = Intervener(self.model, self.directions, self.alpha).install()
        # during a scoring round: stripped input key -> (full input key, inplen, contlen)
        self._answer_lengths: dict[bytes, tuple[bytes, int, int]] | None = None
        self._edit_all = False

    # log-likelihood ------------------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        previous, self._edit_all = self._edit_all, True
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._edit_all = previous

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        results = self._steered_loglikelihoods(requests, disable_tqdm, override_bs)
        bad = next((i for i, r in enumerate(results) if not math.isfinite(float(r[0]))), None)
        if bad is not None:  # a NaN scores as "best" in lm-eval's argmax: never let it become a number
            raise ITIError(non_finite_message(self.alpha, self.directions.source, f"request {bad}"))
        return results

    def _steered_loglikelihoods(self, requests, disable_tqdm: bool, override_bs):
        if self._edit_all or self.mc_positions == "all" or not self.intervener.vectors:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # The model input of a request is (ctx+cont)[-(max_length+1):][:-1]; lm-eval right-pads it with zeros, so a
        # batch row is found by its input with trailing zeros stripped. Requests go to separate rounds (normally there
        # is one) when they would be ambiguous within one: the same input split differently (identical rows needing
        # different edits), or inputs that differ only in trailing zeros (token id 0 is a real token in GPT-2,
        # Llama-3, Qwen: ctx+[5] and ctx+[5, 0] are the same row once padded).
        rounds: list[tuple[list[int], dict[bytes, tuple[bytes, int, int]]]] = []
        for i, (_, ctx, cont) in enumerate(requests):
            tokens = (ctx + cont)[-(self.max_length + 1):][:-1]
            full, stripped = _key(tokens), _key(_strip_zeros(tokens))
            span = (full, len(tokens), len(cont))
            for indices, spans in rounds:
                if spans.get(stripped, span) == span:
                    spans[stripped] = span
                    indices.append(i)
                    break
            else:
                rounds.append(([i], {stripped: span}))
        results: list = [None] * len(requests)
        for indices, spans in rounds:
            self._answer_lengths = spans
            try:
                out = super()._loglikelihood_tokens([requests[i] for i in indices], disable_tqdm=disable_tqdm,
                                                    override_bs=override_bs)
            finally:
                self._answer_lengths = None
            for i, r in zip(indices, out):
                results[i] = r
        return results

    def _row_spans(self, inps: torch.Tensor) -> tuple[list[int], list[int]] | None:
        """(inplen, contlen) per row; None outside a scoring round (batch-size probing). A row that is not one of
        the round's requests raises: scoring it unedited would be a silent wrong number."""
        spans = self._answer_lengths
        if spans is None:
            return None
        inplens, contlens = [], []
        for row in inps.tolist():
            found = spans.get(_key(_strip_zeros(row)))
            if found is None or _key(row[:found[1]]) != found[0]:
                raise ITIError("hf-iti: a batch row matches none of lm-eval's requests, so its answer positions are "
                               "unknown; refusing to score it unedited (report this with your lm-eval version)")
            inplens.append(found[1])
            contlens.append(found[2])
        return inplens, contlens

    def _model_call(self, inps, attn_mask=None, labels=None):
        plan = None
        if self.intervener.vectors and attn_mask is None:
            if self._edit_all or self.mc_positions == "all":
                plan = ALL
            else:
                spans = self._row_spans(inps)
                if spans is not None:
                    skip = 2 if self.mc_positions == "legacy" else 0
                    plan = answer_mask(*spans, width=inps.shape[1], device=inps.device, skip=skip)
        with self.intervener.editing(plan):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        saved = self._answer_lengths, self._edit_all
        self._answer_lengths, self._edit_all = None, False  # probing calls pass through unedited
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._answer_lengths, self._edit_all = saved

    # generation ----------------------------------------------------------------------------------------------
    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if not self.intervener.vectors:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        check_generation_mode(self.model, generation_kwargs)
        # the hooks read Python state per forward: compiled decoding (static caches on GPU) would freeze it
        generation_kwargs["disable_compile"] = True
        check = self.model.register_forward_hook(self._check_finite_logits)
        try:
            with self.intervener.generation(self.gen_positions, prompt_length=int(context.shape[1])):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
        finally:
            check.remove()

    def _check_finite_logits(self, module, args, output):
        logits = getattr(output, "logits", None)
        if logits is not None and not torch.isfinite(logits[:, -1]).all():
            raise ITIError(non_finite_message(self.alpha, self.directions.source, "a generation step"))

    # provenance ----------------------------------------------------------------------------------------------
    def iti_info(self) -> dict:
        d = self.directions
        return {
            "directions": self.directions_path,  # None: a Directions object given in Python, no file
            "directions_sha256": self.directions_sha256,
            "directions_source": "file" if self.directions_path else "in-memory Directions object (no file to hash)",
            "alpha": self.alpha,
            "num_heads_used": d.num_selected,
            "heads_used": [list(p) for p in d.selected_heads()],
            "mc_positions": self.mc_positions,
            "gen_positions": self.gen_positions,
            "rolling_positions": "all",
            "method": d.metadata.get("method", ""),
            "fitted_model": d.metadata.get("model", ""),
            "fitted_model_identity": d.metadata.get("model_identity", ""),
            "model_identity": self.model_identity or "",
            "model_check": self.model_check,  # match, unrecorded (older file) or mismatch allowed
            "site": d.metadata.get("site", ""),
            **fit_split_info(d),
        }

    def get_model_info(self) -> dict:
        from ..judges.glue import judge_provenance

        info = super().get_model_info()
        info["iti"] = self.iti_info()
        info.update(judge_provenance())  # judge ids, revisions, redacted URLs (also when set by environment)
        return info
