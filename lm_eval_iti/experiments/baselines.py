"""The rows of an experiment: ITI, its ablations and the reference points, each labelled with its token semantics.

A ``Variant`` says how the model is run (``hf``, ``hf-iti``, a baked checkpoint, lm-eval's ``steered``), which fit
its directions come from (``FitSpec``), at which strength, and which positions it edits. Hooked and baked/exported
interventions edit different tokens (iti-method.md §8), so every table carries the ``positions`` text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..choices import HEAD_SELECTIONS, SELECT_COLUMNS
from ..errors import ITIError
from ..intervene import GEN_POSITIONS, MC_POSITIONS
from ..options import default_of

KINDS = ("hf", "hf-iti", "baked", "steered")
AUTO = "auto"  # alpha chosen per fold by the side-effect budget (side_effects.alpha_for_kl_budget)
SELECT = "select"  # alpha and K chosen per fold by nested cross-validation on its training folds (executor)


@dataclass(frozen=True)
class FitSpec:
    """One fit-directions configuration (per fold); several variants may share it."""

    method: str = "mass-mean"
    random_heads: bool = False
    num_heads: int = 48
    head_selection: str = default_of("head_selection")  # fit.FitConfig's; effect_* matter for "effect" only
    effect_questions: int = default_of("effect_questions")
    effect_check_heads: int = default_of("effect_check_heads")

    @property
    def name(self) -> str:
        effect = "-effect" if self.head_selection != "probe" else ""
        return f"{self.method}{'-randheads' if self.random_heads else ''}{effect}-k{self.num_heads}"

    def describe(self) -> dict:
        d = dict(asdict(self), name=self.name)
        if self.head_selection == "probe":  # ITI's ranking: described as before the option existed (resume keys)
            for key in ("head_selection", "effect_questions", "effect_check_heads"):
                del d[key]
        return d


@dataclass(frozen=True)
class Variant:
    name: str  # file-safe identifier, unique in a run
    label: str  # what the table calls it
    kind: str  # hf | hf-iti | baked | steered
    positions: str  # token semantics
    alpha: float | str = 0.0  # or AUTO
    fit: FitSpec | None = None
    heads: int | None = None  # use the fit's top-K heads (None: all heads of the file)
    instruction: str = "default"
    mc_positions: str = "answer"
    gen_positions: str = "last"
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def num_heads(self) -> int | None:
        if self.fit is None or self.alpha == 0 or self.alpha == SELECT:  # SELECT: K is chosen per fold
            return None
        return self.heads or self.fit.num_heads

    @property
    def method(self) -> str:
        """The leaderboard's method column."""
        return self.label

    def describe(self) -> dict:
        d = asdict(self)
        d["fit"] = None if self.fit is None else self.fit.describe()
        d["num_heads"] = self.num_heads
        return d


NO_EDIT = "no edit"


MC_POSITION_TEXT = {"answer": "MC: the answer-scoring positions", "all": "MC: every position",
                    "legacy": "MC: from the second answer token (the reference's legacy positions)"}
GEN_POSITION_TEXT = {"last": "gen: last prompt token + every generated token",
                     "generated": "gen: generated tokens only", "all": "gen: every prompt and generated token"}


def hooked_positions(mc_positions: str = "answer", gen_positions: str = "last") -> str:
    if mc_positions not in MC_POSITION_TEXT:
        raise ITIError(f"mc_positions={mc_positions!r} is not one of {', '.join(MC_POSITIONS)}")
    if gen_positions not in GEN_POSITION_TEXT:
        raise ITIError(f"gen_positions={gen_positions!r} is not one of {', '.join(GEN_POSITIONS)}")
    return (f"hf-iti hooks; {MC_POSITION_TEXT[mc_positions]}; {GEN_POSITION_TEXT[gen_positions]}; "
            "CE/KL: every position")


EVERY_POSITION_BIAS = "baked o_proj bias: every position (instruction, primer, question, answer; prompt and generated)"
EVERY_POSITION_STEERED = "lm-eval steered (W_o·shift added at the o_proj output): every position, like the baked bias"

# random-matched: ITI's own heads and sigmas with seeded random directions (the same shift size), one row per draw
# random-matched-kl: the same draws at the alpha where each costs ITI's own KL (matched in side effects, not size)
# random-heads: mass-mean directions on K random heads, one row per draw
# label-shuffled: mass-mean directions on ITI's heads from labels permuted within each question, one row per draw
# style: mass-mean directions on ITI's heads from hedged/negated-vs-plain labels, at ITI's KL (controls.py)
# nested-strategy: with --alpha select, a row whose direction type and head selection are nested too (issue 29)
BASELINE_NAMES = ("random-directions", "random-matched", "random-matched-kl", "random-heads", "label-shuffled",
                  "style", "probe-weights", "no-instruction", "baked", "steered", "nested-strategy")
STRATEGY_ROW = "iti-strategy"  # the nested-strategy row; compared head to head with ITI's row ("iti")
STRATEGY_METHODS, STRATEGY_HEAD_SELECTIONS = ("mass-mean", "probe"), ("probe", "effect")
# the controls with one row per draw ("<family>-<draw>"); validate compares ITI with each family as a whole
DRAW_FAMILIES = ("random-matched", "random-matched-kl", "random-heads", "label-shuffled")
# --baselines study: the controls of a study, with at least these draws per fold (--random-draws raises them)
STUDY = "study"
STUDY_BASELINES = ("random-matched", "random-matched-kl", "random-heads", "label-shuffled", "style",
                   "probe-weights", "no-instruction")
STUDY_DRAWS = {"random-matched": 20, "random-matched-kl": 20, "random-heads": 10, "label-shuffled": 10}
# how draws are seeded (part of each control row's identity, so rows drawn the older way are recomputed)
SEEDING = "SeedSequence(run seed, fold, draw, layer)"


def baseline_variant(instruction: str = "default") -> Variant:
    return Variant("baseline", f"baseline (α=0, instruction={instruction})", "hf", NO_EDIT, instruction=instruction)


def _strength(alpha) -> float | str:
    return alpha if alpha in (AUTO, SELECT) else float(alpha)


def iti_variant(fit: FitSpec, alpha: float | str, heads: int | None = None, instruction: str = "default",
                mc_positions: str = "answer", gen_positions: str = "last", name: str | None = None,
                label: str | None = None) -> Variant:
    k = heads or fit.num_heads
    return Variant(name or "iti", label or f"ITI ({fit.method})", "hf-iti",
                   hooked_positions(mc_positions, gen_positions), alpha=_strength(alpha), fit=fit, heads=heads,
                   instruction=instruction, mc_positions=mc_positions, gen_positions=gen_positions, extra={"k": k})


def is_control(variant: Variant) -> bool:
    """A row whose directions the executor builds from ITI's fit of the fold (executor.Executor.control)."""
    return "control" in variant.extra


def expand_baselines(baselines: tuple[str, ...], random_draws: int = 5,
                     draws: dict[str, int] | None = None) -> tuple[tuple[str, ...], dict[str, int]]:
    """(baseline names in BASELINE_NAMES order, draws per family): ``study`` adds STUDY_BASELINES with at least
    STUDY_DRAWS draws; otherwise every family gets ``random_draws`` unless ``draws`` names it."""
    names = set(baselines)
    counts = {family: int(random_draws) for family in DRAW_FAMILIES}
    if STUDY in names:
        names = (names - {STUDY}) | set(STUDY_BASELINES)
        counts = {family: max(STUDY_DRAWS[family], int(random_draws)) for family in DRAW_FAMILIES}
    counts.update(draws or {})
    unknown = sorted(names - set(BASELINE_NAMES))
    if unknown:
        raise ITIError(f"baselines={unknown[0]!r} is not one of {', '.join(BASELINE_NAMES)} (or 'all', '{STUDY}')")
    bad = [f for f, n in counts.items() if int(n) < 1 and f in names]
    if bad:
        raise ITIError(f"random_draws={counts[bad[0]]} ({bad[0]}) must be at least 1")
    return tuple(n for n in BASELINE_NAMES if n in names), counts


def _control_rows(name: str, main_fit: FitSpec, alpha, draws: int, hooked: dict) -> list[Variant]:
    """The rows of one control built from ITI's fit: one per draw for a family, one for ``style``."""
    labels = {"random-matched": "random directions, matched size", "random-matched-kl": "random directions, matched KL",
              "random-heads": "random heads, mass-mean", "label-shuffled": "mass-mean on shuffled labels"}
    if name == "style":
        variant = iti_variant(main_fit, alpha, name="style", label="style directions (hedged vs plain), matched KL",
                              **hooked)
        return [replace(variant, extra=dict(variant.extra, control="style", match_kl=True))]
    family = "random-matched" if name == "random-matched-kl" else name  # draw d of both is one random direction
    rows = []
    for draw in range(draws):
        variant = iti_variant(main_fit, alpha, name=f"{name}-{draw}", label=f"{labels[name]} (draw {draw})", **hooked)
        extra = dict(variant.extra, control=family, control_seed=draw, seeding=SEEDING,
                     **({"match_kl": True} if name == "random-matched-kl" else {}))
        rows.append(replace(variant, extra=extra))
    return rows


def validate_variants(*, method: str = "mass-mean", alpha: float | str = 15.0, num_heads: int = 48,
                      head_selection: str = default_of("head_selection"),
                      effect_questions: int = default_of("effect_questions"),
                      effect_check_heads: int = default_of("effect_check_heads"),
                      instruction: str = "default", baseline: bool = True, baselines: tuple[str, ...] = (),
                      mc_positions: str = "answer", gen_positions: str = "last", random_draws: int = 5,
                      draws: dict[str, int] | None = None, selection: dict | None = None,
                      curve_scales: tuple[float, ...] = ()) -> list[Variant]:
    """The rows of ``validate``: baseline, ITI, then the requested baselines (in ``BASELINE_NAMES`` order; ``study``
    = STUDY_BASELINES with STUDY_DRAWS), then the curve rows (``curve_rows``) when ``curve_scales`` is given. A draw
    family gets ``random_draws`` rows unless ``draws`` ({family: n}) says otherwise.

    ``alpha="auto"``: each fold's strength is chosen by the side-effect budget on ITI's own fit of that fold, and every
    hooked, baked and steered row of the fold uses that same strength."""
    baselines, counts = expand_baselines(tuple(baselines), random_draws, draws)
    if alpha != SELECT and set(BASELINE_NAMES) <= set(baselines):  # "all": nested-strategy applies to select only
        baselines = tuple(b for b in baselines if b != "nested-strategy")
    if alpha == 0:
        raise ITIError("alpha=0 is the baseline itself; give the strength of the intervention (e.g. 15)")
    main_fit = FitSpec(method, False, num_heads, head_selection, effect_questions, effect_check_heads)
    hooked = dict(instruction=instruction, mc_positions=mc_positions, gen_positions=gen_positions)
    rows = []
    if baseline:
        rows.append(baseline_variant(instruction))
    main = iti_variant(main_fit, alpha, **hooked)
    if alpha == SELECT:
        selection = check_selection(selection, num_heads, main_fit)
        searched = ", ".join(what for what, key in (("direction type", "methods"), ("head selection", "head_selections"))
                             if key in selection)
        main = replace(main, label=f"ITI ({method}{', effect heads' if head_selection == 'effect' else ''}), α and K"
                                   f"{', ' + searched if searched else ''} by nested selection",
                       extra=dict(main.extra, select=selection))
    elif "nested-strategy" in baselines:
        raise ITIError("baselines=nested-strategy needs --alpha select (its direction type and heads are chosen on "
                       "inner folds)")
    rows.append(main)
    for name in baselines:
        if name == "random-directions":
            rows.append(iti_variant(FitSpec("random", False, num_heads), alpha, name=name,
                                    label="random directions (top-K probe heads)", **hooked))
        elif name in DRAW_FAMILIES or name == "style":
            rows += _control_rows(name, main_fit, alpha, counts.get(name, 1), hooked)
        elif name == "probe-weights":
            rows.append(iti_variant(FitSpec("probe", False, num_heads), alpha, name=name,
                                    label="probe-weight directions", **hooked))
        elif name == "no-instruction":
            rows.append(Variant("no-instruction", "no instruction prompt (α=0, instruction=none)", "hf", NO_EDIT,
                                instruction="none"))
        elif name == "baked":
            rows.append(Variant("baked", f"baked bias ({method})", "baked", EVERY_POSITION_BIAS, alpha=_strength(alpha),
                                fit=main_fit, instruction=instruction))
        elif name == "steered":
            rows.append(Variant("steered", f"lm-eval steered ({method})", "steered", EVERY_POSITION_STEERED,
                                alpha=_strength(alpha), fit=main_fit, instruction=instruction))
        elif name == "nested-strategy":
            strategy = dict(main.extra["select"], methods=list(selection.get("methods") or STRATEGY_METHODS),
                            head_selections=list(selection.get("head_selections") or STRATEGY_HEAD_SELECTIONS))
            strategy = check_selection(strategy, num_heads, main_fit)
            rows.append(replace(iti_variant(main_fit, alpha, name=STRATEGY_ROW, **hooked),
                                label="ITI, α, K, direction type and head selection by nested selection",
                                extra=dict(main.extra, select=strategy)))
    return rows + curve_rows(rows, curve_scales)


CURVE_SEPARATOR = "-x"  # "random-heads-x2": the random-heads row at twice its alpha


def curve_point(name: str) -> tuple[str, float] | None:
    """("random-heads", 2.0) for the curve row "random-heads-x2" (validate --curve-scales), else None."""
    head, sep, tail = name.rpartition(CURVE_SEPARATOR)
    try:
        return (head, float(tail)) if sep and head else None
    except ValueError:
        return None


def curve_rows(rows: list[Variant], scales: tuple[float, ...]) -> list[Variant]:
    """Extra points on the gain-vs-KL curve of ITI and of every hooked control: each row at ``scale`` times its own
    resolved alpha (same fit, heads, K and random draw). A random control contributes its first draw only (its other
    draws sit at scale 1), and the KL-matched draws none (their alpha is the one that matches ITI's KL)."""
    bad = [s for s in scales if not float(s) > 0 or float(s) == 1]
    if bad:
        raise ITIError(f"--curve-scales {bad[0]:g}: every scale must be positive and not 1 (scale 1 is the row itself)")
    out = []
    for row in rows:
        if row.kind != "hf-iti" or row.extra.get("match_kl") or row.extra.get("control_seed", 0) != 0:
            continue
        for scale in sorted(dict.fromkeys(float(s) for s in scales)):
            out.append(replace(row, name=f"{row.name}{CURVE_SEPARATOR}{scale:g}", label=f"{row.label}, α×{scale:g}",
                               extra=dict(row.extra, curve_scale=scale, curve_of=row.name)))
    return out


def check_selection(selection: dict | None, fit_num_heads: int, fit: FitSpec | None = None) -> dict:
    """{"alphas", "num_heads", "by", "inner_folds", "kl_budget"[, "methods", "head_selections"]} of ``--alpha
    select``, checked. ``methods`` / ``head_selections`` (direction types and head rankings searched with alpha and K)
    are kept only when they search more than the row's own fit (so a plain alpha-and-K selection is described, and
    resumed, as before they existed)."""
    if not selection or not selection.get("alphas") or not selection.get("num_heads"):
        raise ITIError("--alpha select needs --select-alphas and --select-num-heads (the grid to choose from)")
    ks = [int(k) for k in selection["num_heads"]]
    if any(k < 1 or k > fit_num_heads for k in ks):
        raise ITIError(f"--select-num-heads {','.join(map(str, ks))}: every K must be between 1 and --num-heads "
                       f"{fit_num_heads} (the fit's size)")
    by = selection.get("by", "MC2")
    if by not in SELECT_COLUMNS:
        raise ITIError(f"--select-by {by!r} is not one of {', '.join(SELECT_COLUMNS)}")
    inner = int(selection.get("inner_folds", 2))
    if inner < 2:
        raise ITIError(f"--inner-folds {inner}: need at least 2")
    budget = selection.get("kl_budget")
    if budget is not None and not float(budget) > 0:
        raise ITIError(f"--kl-budget {budget}: must be positive")
    out = {"alphas": [float(a) for a in selection["alphas"]], "num_heads": ks, "by": by, "inner_folds": inner,
           "kl_budget": None if budget is None else float(budget)}
    fit = fit or FitSpec(num_heads=fit_num_heads)
    for key, allowed, own in (("methods", STRATEGY_METHODS, fit.method),
                              ("head_selections", HEAD_SELECTIONS, fit.head_selection)):
        values = list(dict.fromkeys(selection.get(key) or [own]))
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ITIError(f"--select-{key.replace('_', '-')} {bad[0]!r}: each must be one of {', '.join(allowed)}")
        if values != [own]:
            out[key] = values
    if "effect" in out.get("head_selections", []):  # the inner effect fits' settings are part of what is chosen
        out["effect"] = {"questions": fit.effect_questions, "check_heads": fit.effect_check_heads}
    return out


def sweep_name(alpha: float, k: int) -> str:
    return f"iti-a{alpha:g}-k{k}"


def sweep_variants(alphas: list[float], ks: list[int], *, method: str = "mass-mean", instruction: str = "default",
                   mc_positions: str = "answer", gen_positions: str = "last",
                   head_selection: str = default_of("head_selection"),
                   effect_questions: int = default_of("effect_questions"),
                   effect_check_heads: int = default_of("effect_check_heads")) -> list[Variant]:
    """alpha 0 once (the baseline: no edit whatever K), then one hf-iti row per (alpha, K) from ONE fit with the
    largest K per fold: a K-head row uses that fit's top-K heads (selection, directions and sigma of a head do not
    depend on K)."""
    if not alphas or not ks:
        raise ITIError("alphas= and num_heads= need at least one value each")
    if any(k < 1 for k in ks):
        raise ITIError(f"num_heads={','.join(map(str, ks))}: every K must be at least 1")
    fit = FitSpec(method, False, max(ks), head_selection, effect_questions, effect_check_heads)
    rows = [baseline_variant(instruction)]
    for alpha in alphas:
        if alpha == 0:
            continue
        for k in ks:
            rows.append(iti_variant(fit, alpha, heads=k, instruction=instruction, mc_positions=mc_positions,
                                    gen_positions=gen_positions, name=sweep_name(alpha, k),
                                    label=f"ITI ({method}) α={alpha:g} K={k}"))
    return rows
