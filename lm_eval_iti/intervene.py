"""Apply head-wise shifts: one forward pre-hook per intervened layer adds one precomputed vector at chosen positions.

Which positions are edited is a *plan*, set by the caller around each forward:
  ``None``   edit nothing (the default, e.g. lm-eval's batch-size probing calls);
  ``ALL``    every position;
  ``LAST``   only column -1 (with left padding: every row's last prompt token);
  a bool tensor [B, T]: exactly the True positions.
During ``generation(mode)`` the plan follows the call phase, counted by a pre-hook on the whole model (not guessed
from the sequence length, so a length-1 prompt is still a prefill): the first forward is the prompt,
every later one a decode step, whose new tokens are always edited.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Union

import torch
from torch import nn

from .architectures import model_shape, out_projections
from .artifact import Directions, ModelShape, validate
from .errors import ITIError

ALL = "all"
LAST = "last"
Plan = Union[None, str, torch.Tensor]

MC_POSITIONS = ("answer", "all", "legacy")
# legacy: the reference baukit code edited from len(prompt)+4, i.e. (Llama tokenizer) from the second answer token
GEN_POSITIONS = ("last", "generated", "all")
_PREFILL_PLAN = {"last": LAST, "generated": None, "all": ALL}


def add_at_positions(x: torch.Tensor, vector: torch.Tensor, plan: Plan) -> torch.Tensor:
    """x [B, T, F] plus vector [F] at the plan's positions; untouched positions stay bit-identical."""
    if plan is None:
        return x
    if vector.dtype != x.dtype or vector.device != x.device:
        vector = vector.to(device=x.device, dtype=x.dtype)
    if isinstance(plan, str):
        if plan == ALL:
            return x + vector
        if plan == LAST:
            x = x.clone()
            x[:, -1] = x[:, -1] + vector
            return x
        raise ValueError(f"unknown plan {plan!r}")
    mask = plan.to(device=x.device)
    return torch.where(mask[..., None], x + vector, x)


class Intervener:
    """Holds the per-layer shift vectors and the hooks that add them; ``alpha == 0`` installs no edit at all."""

    def __init__(self, model: nn.Module, directions: Directions, alpha: float):
        self.model = model
        self.shape: ModelShape = model_shape(model)
        validate(directions, self.shape)
        self.directions = directions
        self.alpha = float(alpha)
        projections = out_projections(model)
        self.vectors: dict[int, torch.Tensor] = {}
        if self.alpha != 0.0:
            for layer, vec in directions.shift_vectors(self.alpha).items():
                weight = projections[layer].weight
                # each vector lives on its own module's device and dtype (device_map across GPUs)
                self.vectors[layer] = vec.to(device=weight.device, dtype=weight.dtype)
        self._projections = projections
        self._handles: list = []
        self.plan: Plan = None
        self._gen_mode: str | None = None
        self._forward_index = 0

    # hooks -------------------------------------------------------------------------------------------------
    def install(self) -> "Intervener":
        if self._handles:
            return self
        for layer, vec in self.vectors.items():
            self._handles.append(self._projections[layer].register_forward_pre_hook(self._make_hook(vec)))
        if self.vectors:
            self._handles.append(self.model.register_forward_pre_hook(self._count_forward))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _count_forward(self, module, args):
        if self._gen_mode is not None:
            self._forward_index += 1

    def current_plan(self) -> Plan:
        if self._gen_mode is None:
            return self.plan
        if self._forward_index <= 1:
            return _PREFILL_PLAN[self._gen_mode]
        return ALL

    def _make_hook(self, vector: torch.Tensor):
        def hook(module, args):
            plan = self.current_plan()
            if plan is None:
                return None
            return (add_at_positions(args[0], vector, plan),) + tuple(args[1:])

        return hook

    # plans -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def editing(self, plan: Plan) -> Iterator[None]:
        previous, self.plan = self.plan, plan
        try:
            yield
        finally:
            self.plan = previous

    @contextlib.contextmanager
    def generation(self, mode: str) -> Iterator[None]:
        if mode not in GEN_POSITIONS:
            raise ITIError(f"gen_positions={mode!r} is not one of {', '.join(GEN_POSITIONS)}")
        previous = (self._gen_mode, self._forward_index)
        self._gen_mode, self._forward_index = mode, 0
        try:
            yield
        finally:
            self._gen_mode, self._forward_index = previous


def answer_mask(inplens: list[int], contlens: list[int], width: int, device=None, skip: int = 0) -> torch.Tensor:
    """[B, width] True at positions inplen-contlen+skip .. inplen-1: with skip=0 exactly those whose logits score the
    continuation; skip=2 starts at the second answer token (the reference's legacy semantics)."""
    mask = torch.zeros(len(inplens), width, dtype=torch.bool, device=device)
    for row, (inplen, contlen) in enumerate(zip(inplens, contlens)):
        mask[row, max(inplen - contlen + skip, 0):inplen] = True
    return mask
