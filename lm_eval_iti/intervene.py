"""Apply head-wise shifts: one forward pre-hook per intervened layer adds one precomputed vector at chosen positions.

Which positions are edited is a *plan*, set by the caller around each forward:
  ``None``   edit nothing (the default, e.g. lm-eval's batch-size probing calls);
  ``ALL``    every position;
  ``LAST``   only column -1 (with left padding: every row's last prompt token);
  ``FromColumn(k)``: columns k and later;
  a bool tensor [B, T]: exactly the True positions.
During ``generation(mode, prompt_length)`` the plan follows absolute positions: a pre-hook on the whole model counts
the tokens each forward feeds (so a length-1 prompt is still a prompt, and a prompt fed in several chunks by
``prefill_chunk_size`` is edited as if in one), and each forward edits its columns whose absolute position is at or
after the mode's first edited position (``last``: prompt_length-1, ``generated``: prompt_length, ``all``: 0). A
forward that feeds several tokens after the prompt (assisted or prompt-lookup decoding verifying candidates) cannot
be placed this way and raises.

Shift vectors are kept in float32 and cast to the activation's dtype at the add: the projection weight's dtype is
no guide (bitsandbytes stores uint8/int8, FP8 layers float8).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Union

import torch
from torch import nn

from .architectures import ModelShape, model_shape, out_projections
from .choices import GEN_POSITIONS, MC_POSITIONS  # noqa: F401  (re-exported: this module's option sets)

# "Directions" (artifact.py) is not imported here: artifact imports this module for Directions.apply
from .errors import ITIError

ALL = "all"
LAST = "last"


class FromColumn(NamedTuple):
    """Plan: every column from ``column`` on (0 <= column < T)."""

    column: int


Plan = Union[None, str, FromColumn, torch.Tensor]

# the first edited absolute position during generation, relative to the prompt length P
_FIRST_EDITED = {"last": lambda p: p - 1, "generated": lambda p: p, "all": lambda p: 0}
_OWNER_ATTRIBUTE = "_lm_eval_iti_intervener"


def add_at_positions(x: torch.Tensor, vector: torch.Tensor, plan: Plan) -> torch.Tensor:
    """x [B, T, F] plus vector [F] at the plan's positions; untouched positions stay bit-identical."""
    if plan is None:
        return x
    if vector.dtype != x.dtype or vector.device != x.device:
        vector = vector.to(device=x.device, dtype=x.dtype)
    if isinstance(plan, FromColumn):
        x = x.clone()
        x[:, plan.column:] = x[:, plan.column:] + vector
        return x
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


def check_shift_fits(vectors: dict[int, torch.Tensor], projections, dtype: torch.dtype, alpha: float,
                     source: str) -> None:
    """Each shift, and its image through the output projection, must be finite in the model's dtype: a shift that
    overflows turns every loglikelihood into NaN, which lm-eval would score rather than refuse."""
    for layer, vec in vectors.items():
        images = [vec]
        weight = getattr(projections[layer], "weight", None)
        if weight is not None and weight.is_floating_point() and weight.device.type != "meta":
            with torch.no_grad():  # in the weight's own dtype and place: no float32 copy of a large matrix
                images.append(weight.detach() @ vec.to(device=weight.device, dtype=weight.dtype))
        for image in images:
            if not (torch.isfinite(image).all() and torch.isfinite(image.to(dtype)).all()):
                raise ITIError(f"alpha={alpha:g} with {source}: the shift of layer {layer} (norm "
                               f"{float(vec.double().norm()):.3g}) overflows {str(dtype).replace('torch.', '')}; "
                               "use a smaller alpha")


class Intervener:
    """Holds the per-layer shift vectors and the hooks that add them; ``alpha == 0`` installs no edit at all."""

    def __init__(self, model: nn.Module, directions: "Directions", alpha: float):
        self.model = model
        self.shape: ModelShape = model_shape(model)
        directions.check(model)
        self.directions = directions
        self.alpha = float(alpha)
        projections = out_projections(model)
        self.vectors: dict[int, torch.Tensor] = {}
        if self.alpha != 0.0:
            for layer, vec in directions.shift_vectors(self.alpha).items():
                # each vector lives on its own module's device (device_map across GPUs), in float32: it is cast to
                # the activation dtype at the add (a quantized weight's uint8/int8/float8 dtype would wreck it)
                device = projections[layer].weight.device
                if device.type == "meta":  # offloaded by accelerate: add_at_positions moves it to the input's device
                    device = torch.device("cpu")
                self.vectors[layer] = vec.to(device=device, dtype=torch.float32)
            check_shift_fits(self.vectors, projections, getattr(model, "dtype", torch.float32), self.alpha,
                             directions.source)
        self._projections = projections
        self._handles: list = []
        self.plan: Plan = None
        self._gen_mode: str | None = None
        self._prompt_length: int | None = None
        self._consumed = 0  # tokens fed to the model so far inside generation()
        self._window = (0, 0)  # (absolute start, width) of the current forward inside generation()

    # hooks -------------------------------------------------------------------------------------------------
    def install(self) -> "Intervener":
        """Add the hooks. A model holds at most one installed intervener: hooks must never stack silently."""
        if self._handles:
            return self
        if not self.vectors:
            return self  # alpha 0: no hook, nothing that could stack
        owner = getattr(self.model, _OWNER_ATTRIBUTE, None)
        if owner is not None and owner is not self:
            raise ITIError(f"{type(self.model).__name__} already has an ITI intervention installed "
                           f"({owner.directions.source}, alpha={owner.alpha:g}); remove it first "
                           "(intervener.remove()) or load a fresh model: two would add both shifts")
        for layer, vec in self.vectors.items():
            self._handles.append(self._projections[layer].register_forward_pre_hook(self._make_hook(vec)))
        self._handles.append(self.model.register_forward_pre_hook(self._count_tokens, with_kwargs=True))
        object.__setattr__(self.model, _OWNER_ATTRIBUTE, self)  # a plain attribute, not a submodule
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(self.model, _OWNER_ATTRIBUTE, None) is self:
            object.__delattr__(self.model, _OWNER_ATTRIBUTE)

    def _count_tokens(self, module, args, kwargs):
        if self._gen_mode is None:
            return None
        fed = kwargs.get("input_ids")
        if fed is None:
            fed = args[0] if args else kwargs.get("inputs_embeds")
        width = int(fed.shape[1])
        start = self._consumed
        if self._prompt_length is None:  # caller did not say: the first forward is the whole prompt
            self._prompt_length = width
        prompt = self._prompt_length
        if (start < prompt < start + width) or (start >= prompt and width != 1):
            raise ITIError(f"generation fed {width} tokens at once at position {start} of a {prompt}-token prompt: "
                           "hf-iti edits by absolute position and supports one new token per step after the prompt "
                           "(not assisted, prompt-lookup or speculative decoding)")
        self._consumed = start + width
        self._window = (start, width)
        return None

    def current_plan(self) -> Plan:
        if self._gen_mode is None:
            return self.plan
        start, width = self._window
        first = _FIRST_EDITED[self._gen_mode](self._prompt_length or 0)
        if start >= first:
            return ALL
        if start + width <= first:
            return None
        return FromColumn(first - start)

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
    def generation(self, mode: str, prompt_length: int | None = None) -> Iterator[None]:
        """Edit one ``generate`` call by absolute position; ``prompt_length``: the (padded) prompt width, else the
        width of the first forward."""
        if mode not in GEN_POSITIONS:
            raise ITIError(f"gen_positions={mode!r} is not one of {', '.join(GEN_POSITIONS)}")
        previous = (self._gen_mode, self._prompt_length, self._consumed, self._window)
        self._gen_mode, self._prompt_length, self._consumed, self._window = mode, prompt_length, 0, (0, 0)
        try:
            yield
        finally:
            self._gen_mode, self._prompt_length, self._consumed, self._window = previous


FORWARD_POSITIONS = (ALL, LAST)


@contextlib.contextmanager
def steer(model: nn.Module, directions: "Directions", alpha: float, *, positions: str = ALL,
          gen_positions: str = ALL) -> Iterator[Intervener]:
    """``Directions.apply``: hooks for the duration of a ``with`` block. Plain forwards edit ``positions``; every
    ``model.generate`` call inside the block edits ``gen_positions`` by absolute position (its own prompt length)."""
    if positions not in FORWARD_POSITIONS:
        raise ITIError(f"positions={positions!r} is not one of {', '.join(FORWARD_POSITIONS)}")
    if gen_positions not in GEN_POSITIONS:
        raise ITIError(f"gen_positions={gen_positions!r} is not one of {', '.join(GEN_POSITIONS)}")
    owner = getattr(model, _OWNER_ATTRIBUTE, None)
    if owner is not None:
        raise ITIError(f"{type(model).__name__} is already steered ({owner.directions.source}, alpha={owner.alpha:g}): "
                       "leave the other apply() block first; two would add both shifts")
    intervener = Intervener(model, directions, alpha).install()
    object.__setattr__(model, _OWNER_ATTRIBUTE, intervener)  # also at alpha 0, which installs no hook
    generate = model.__dict__.get("generate")

    def steered_generate(*args, **kwargs):
        with intervener.generation(gen_positions):
            return type(model).generate(model, *args, **kwargs) if generate is None else generate(*args, **kwargs)

    model.generate = steered_generate
    try:
        with intervener.editing(positions):
            yield intervener
    finally:
        if generate is None:
            del model.generate
        else:
            model.generate = generate
        intervener.remove()
        if getattr(model, _OWNER_ATTRIBUTE, None) is intervener:
            object.__delattr__(model, _OWNER_ATTRIBUTE)


def answer_mask(inplens: list[int], contlens: list[int], width: int, device=None, skip: int = 0) -> torch.Tensor:
    """[B, width] True at positions inplen-contlen+skip .. inplen-1: with skip=0 exactly those whose logits score the
    continuation; skip=2 starts at the second answer token (the reference's legacy semantics)."""
    mask = torch.zeros(len(inplens), width, dtype=torch.bool, device=device)
    for row, (inplen, contlen) in enumerate(zip(inplens, contlens)):
        mask[row, max(inplen - contlen + skip, 0):inplen] = True
    return mask
