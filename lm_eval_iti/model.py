"""The ``hf-iti`` lm-eval model: HFLM plus ITI head-wise shifts. The only lm-eval model glue in the package.

Positions edited (see ``intervene.py`` for the mechanism):
  loglikelihood, ``mc_positions=answer`` (default): for a request of C context and X continuation tokens, the
  positions C-1 .. C+X-2 of the input (context+continuation without its last token), exactly those whose logits
  score the continuation; ``all``: every position; ``legacy``: from the second answer token on (what the reference's
  baukit code effectively did with the Llama tokenizer: answer tokens 1 and 2 are scored unedited).
  loglikelihood_rolling: every position.
  generation, ``gen_positions=last`` (default, the original ITI convention): the last prompt position in the
  prompt forward, then every generated token; ``generated``: generated tokens only; ``all``: every prompt
  position and every generated token (what a baked bias does).
"""

from __future__ import annotations

import logging
import math
import os

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from .architectures import model_shape
from .artifact import file_sha256, load_directions
from .errors import ITIError, install_one_line_errors
from .gguf import hflm_model_args
from .intervene import ALL, GEN_POSITIONS, MC_POSITIONS, Intervener, answer_mask

install_one_line_errors()
log = logging.getLogger(__name__)


def parse_alpha(alpha) -> float | None:
    if alpha is None or alpha == "":
        return None
    if isinstance(alpha, bool):
        raise ITIError(f"alpha={alpha!r} is not a number")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ITIError(f"alpha={alpha!r} is not a number") from None
    if not math.isfinite(value):
        raise ITIError(f"alpha={alpha!r} must be finite")
    return value


def parse_heads(heads) -> int | None:
    if heads is None or heads == "":
        return None
    if isinstance(heads, bool) or not str(heads).isdigit() or int(heads) <= 0:
        raise ITIError(f"heads={heads!r} must be a positive whole number of heads")
    return int(heads)


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ITIError(f"{value!r} is not true or false")


def check_identity(directions, identity: str | None) -> None:
    """Warn when the directions were fitted on a different GGUF file than the one loaded (same geometry)."""
    fitted = directions.metadata.get("model_identity", "")
    if identity and fitted.startswith("gguf:") and fitted != identity:
        log.warning(f"lm-eval-iti: the directions were fitted on {fitted}, but the loaded GGUF is {identity}")


def check_options(directions, mc_positions: str, gen_positions: str) -> None:
    """Everything checkable before the model is loaded, so bad input fails fast."""
    if not directions:
        raise ITIError("hf-iti needs model_args directions=PATH (a directions .safetensors file)")
    if not os.path.isfile(str(directions)):
        raise ITIError(f"{directions}: directions file not found")
    if mc_positions not in MC_POSITIONS:
        raise ITIError(f"mc_positions={mc_positions!r} is not one of {', '.join(MC_POSITIONS)}")
    if gen_positions not in GEN_POSITIONS:
        raise ITIError(f"gen_positions={gen_positions!r} is not one of {', '.join(GEN_POSITIONS)}")


def _key(tokens) -> bytes:
    return torch.as_tensor(tokens, dtype=torch.int64).numpy().tobytes()


@register_model("hf-iti")
class HFITI(HFLM):
    """``--model hf-iti --model_args pretrained=...,directions=FILE[,alpha=15][,heads=K][,mc_positions=...][,gen_positions=...]``"""

    def __init__(self, pretrained="", directions: str | None = None, alpha=None, heads=None,
                 mc_positions: str = "answer", gen_positions: str = "last", gguf_file: str | None = None,
                 gguf_cache=True, **kwargs):
        check_options(directions, mc_positions, gen_positions)
        alpha_value = parse_alpha(alpha)
        k = parse_heads(heads)
        pretrained, gguf_file, self.model_identity = hflm_model_args(pretrained, gguf_file, parse_bool(gguf_cache))
        super().__init__(pretrained=pretrained, gguf_file=gguf_file, **kwargs)
        shape = model_shape(self.model)
        loaded = load_directions(directions, expect=shape)
        check_identity(loaded, self.model_identity)
        self.directions_path = str(directions)
        self.directions_sha256 = file_sha256(directions)
        self.directions = loaded.top_k(k) if k else loaded
        self.alpha = loaded.alpha if alpha_value is None else alpha_value
        self.mc_positions = mc_positions
        self.gen_positions = gen_positions
        self.intervener = Intervener(self.model, self.directions, self.alpha).install()
        self._answer_lengths: dict[bytes, int] | None = None
        self._edit_all = False

    # log-likelihood ------------------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        previous, self._edit_all = self._edit_all, True
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._edit_all = previous

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        if self._edit_all or self.mc_positions == "all" or not self.intervener.vectors:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # The model input of a request is (ctx+cont)[-(max_length+1):][:-1]; map it to len(cont). Two requests with
        # the same input but another split would need different edits on identical rows, so they go to separate
        # rounds (normally there is one round).
        rounds: list[tuple[list[int], dict[bytes, int]]] = []
        for i, (_, ctx, cont) in enumerate(requests):
            key = _key((ctx + cont)[-(self.max_length + 1):][:-1])
            for indices, lengths in rounds:
                if lengths.get(key, len(cont)) == len(cont):
                    lengths[key] = len(cont)
                    indices.append(i)
                    break
            else:
                rounds.append(([i], {key: len(cont)}))
        results: list = [None] * len(requests)
        for indices, lengths in rounds:
            self._answer_lengths = lengths
            try:
                out = super()._loglikelihood_tokens([requests[i] for i in indices], disable_tqdm=disable_tqdm,
                                                    override_bs=override_bs)
            finally:
                self._answer_lengths = None
            for i, r in zip(indices, out):
                results[i] = r
        return results

    def _row_spans(self, inps: torch.Tensor) -> tuple[list[int], list[int]] | None:
        """(inplen, contlen) per row from the lookup; None if any row is not a known request (e.g. batch probing)."""
        lengths = self._answer_lengths
        if not lengths:
            return None
        inplens, contlens = [], []
        for row in inps.tolist():
            last = len(row)
            while last > 0 and row[last - 1] == 0:
                last -= 1
            for length in range(max(last, 1), len(row) + 1):  # a real last token may be id 0 (the pad id)
                contlen = lengths.get(_key(row[:length]))
                if contlen is not None:
                    break
            else:
                return None
            inplens.append(length)
            contlens.append(contlen)
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
        with self.intervener.generation(self.gen_positions):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    # provenance ----------------------------------------------------------------------------------------------
    def iti_info(self) -> dict:
        d = self.directions
        return {
            "directions": self.directions_path,
            "directions_sha256": self.directions_sha256,
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
            "site": d.metadata.get("site", ""),
        }

    def get_model_info(self) -> dict:
        from .judges.glue import judge_provenance

        info = super().get_model_info()
        info["iti"] = self.iti_info()
        info.update(judge_provenance())  # judge ids, revisions, redacted URLs (also when set by environment)
        return info
