"""Runs a ``plan.Plan`` on a ``session.ModelSession``: per job, the fold's fit (or a control built from it), the row's
alpha (fixed, auto by a KL budget, KL-matched, or chosen by nested selection on the training folds), its evaluation
through lm-eval (or the shared-prefix engine: ``harness.engine``; each result records ``scored_by``), the leak check
against the directions' training questions, and CE/KL. Each result is written as soon as it is done; ``summary``
turns them into results.json and table.md.

The hooked grid rows of a sweep over loglikelihood tasks are scored by the shared-prefix engine (lm-eval builds the
requests and computes the metrics, every such row of a fold in one pass); ``engine="off"`` scores every row through
lm-eval's hf-iti.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

from .. import __version__
from ..atomic import write_json_atomic, write_json_sealed, write_text_atomic
from ..errors import ITIError
from ..loading import execution_device
from . import aggregate as agg
from . import records
from .baselines import AUTO, SELECT, SELECT_COLUMNS, Variant, is_control
from .plan import RESULTS_FORMAT, Plan, instruction_metadata, saved_for, sha_of
from .session import ModelSession
from .summary import comparisons, summarise, table_markdown


class Executor:
    """``Executor(plan, session).run()`` -> the results dict (also written to the plan's folder)."""

    def __init__(self, plan: Plan, session: ModelSession | None = None):
        self.plan = plan
        self.config = plan.config
        self.session = session or ModelSession(plan.config)
        self._engine_ok: bool | None = None
        self._engine_results: dict[tuple[int, str], dict] = {}
        self._resolved: dict = {}
        self._view = None  # (fold, fit spec, controls.FitView): the activations the control rows are built from

    # the shared-prefix engine ---------------------------------------------------------------------------------
    def engine_enabled(self) -> bool:
        """--engine auto: only when every task is a loglikelihood task; on: refuse the others; off: never."""
        if self._engine_ok is None:
            c = self.config
            if c.engine == "off":
                self._engine_ok = False
            else:
                from ..harness.engine import loglikelihood_only

                others = loglikelihood_only(list(c.tasks), self.plan.task_metadata(0))
                if others and c.engine == "on":
                    raise ITIError(f"engine=on: the engine scores loglikelihood tasks only, and "
                                   f"{', '.join(others)} is not one; use engine=auto or off")
                self._engine_ok = not others
        return self._engine_ok

    def uses_engine(self, variant: Variant) -> bool:
        return self.plan.engine_candidate(variant) and self.engine_enabled()

    def engine_evaluation(self, fold: int, variant: Variant) -> dict:
        """The run_tasks-style evaluation of ``variant`` on ``fold``; the first request scores, in one engine call,
        every engine row of the fold that shares its positions and instruction (and, in a sweep, its fit) and is not
        on disk yet (validate: ``_engine_validate_group``, each row with its own directions and alpha)."""
        key = (fold, variant.name)
        if key not in self._engine_results:
            if self.plan.kind == "validate":
                self._engine_validate_group(fold, variant)
                return self._engine_results.pop(key)
            from ..harness.engine import score_points

            c = self.config
            model, tokenizer = self.session.model()
            group = [v for v in self.plan.variants if self.uses_engine(v) and v.fit == variant.fit
                     and v.mc_positions == variant.mc_positions and v.instruction == variant.instruction
                     and (v is variant or self.plan.saved_result(fold, v) is None)]
            directions = self.fit(fold, variant.fit)["directions"]
            evaluations = score_points(model, tokenizer, list(c.tasks), self.plan.task_metadata(fold),
                                       directions, [(v.alpha if v.kind != "hf" else 0.0, v.heads) for v in group],
                                       per_task_metadata=instruction_metadata(variant.instruction),
                                       mc_positions=variant.mc_positions, limit=c.limit,
                                       bootstrap_iters=c.bootstrap_iters, apply_chat_template=c.apply_chat_template,
                                       system_instruction=c.system_instruction, max_length=c.max_length,
                                       batch_size=c.batch_size, max_batch_bytes=c.engine_max_batch_bytes)
            for v, evaluation in zip(group, evaluations):
                self._engine_results[(fold, v.name)] = evaluation
        return self._engine_results.pop(key)

    def _engine_validate_group(self, fold: int, variant: Variant) -> None:
        """Score, in one engine call, every engine row of validate on ``fold`` that shares ``variant``'s positions
        and instruction and is not on disk yet, each at its own resolved alpha and K with its own directions (ITI,
        the control draws, random heads, probe weights, the unedited rows): one forward per prompt serves every row,
        which is what makes a table of controls affordable."""
        from .. import prefix_scoring
        from ..harness.engine import score_points

        c = self.config
        model, tokenizer = self.session.model()
        names = [v for v in self.plan.variants if self.uses_engine(v) and v.mc_positions == variant.mc_positions
                 and v.instruction == variant.instruction
                 and (v is variant or self.plan.saved_result(fold, v) is None)]
        points, labels = [], []
        for v in names:
            resolved, fit = self.resolve(fold, v)[:2]
            alpha = 0.0 if resolved.kind == "hf" else float(resolved.alpha)
            directions = fit["directions"] if fit is not None else None
            points += prefix_scoring.make_points(directions, [(alpha, resolved.heads)])
            labels.append((alpha, resolved.heads))
        evaluations = score_points(model, tokenizer, list(c.tasks), self.plan.task_metadata(fold),
                                   None, labels, points=points, mc_positions=variant.mc_positions, limit=c.limit,
                                   per_task_metadata=instruction_metadata(variant.instruction),
                                   bootstrap_iters=c.bootstrap_iters, apply_chat_template=c.apply_chat_template,
                                   system_instruction=c.system_instruction, max_length=c.max_length,
                                   batch_size=c.batch_size, max_batch_bytes=c.engine_max_batch_bytes)
        for v, evaluation in zip(names, evaluations):
            evaluation["model_info"] = dict(evaluation["model_info"], engine_rows_in_call=len(names))
            self._engine_results[(fold, v.name)] = evaluation

    def judged_result(self, fold: int, variant: Variant, saved: dict) -> dict | None:
        """``saved`` with the judgments an outage left out made now from its kept answers (judges.folds), written
        back; None when it lacks judgments and kept no answers, so it must be evaluated again."""
        from ..judges.folds import complete_fold

        completed = complete_fold(saved, self.config.metadata)
        if completed is not None and completed is not saved:
            write_json_sealed(self.plan.fold_path(fold, variant), completed)
        return completed

    # fits, controls, alpha auto, KL matching, nested selection -------------------------------------------------
    def fit(self, fold: int, spec) -> dict:
        key = (fold, spec)
        if key in self.session.fits:
            return self.session.fits[key]
        from ..artifact import file_sha256, load_directions
        from ..fit import fit_and_save

        c = self.config
        model, tokenizer = self.session.model()
        path = self.plan.out / "directions" / f"fold_{fold}_{spec.name}.safetensors"
        result = fit_and_save(model, path, tokenizer=tokenizer, **self._fit_options(fold, spec),
                                cache_dir=c.cache_dir, revision=c.revision,
                                progress=c.progress, collect_all_folds=self._collect_all_folds())
        directions = load_directions(path)
        recorded = json.loads(directions.metadata["train_question_ids"])
        record = {"fold": fold, "fit": spec.name, "path": str(path), "sha256": file_sha256(path),
                  "train_question_ids_sha256": directions.metadata.get("train_question_ids_sha256", ""),
                  "num_train_questions": len(recorded), "forward_passes": result.forward_passes,
                  "method": spec.method, "random_heads": spec.random_heads, "num_heads": spec.num_heads,
                  "head_selection": spec.head_selection}
        self.session.fits_run.append(record)
        self.session.fits[key] = {"record": record, "directions": directions, "train_ids": set(recorded)}
        return self.session.fits[key]

    def _fit_options(self, fold: int, spec, *, data_dir=None, num_folds: int | None = None) -> dict:
        """The options (fit.FitConfig fields) of ``spec``'s fit on ``fold``: what fit_and_save and fit_view share
        (``data_dir``, ``num_folds``: a nested selection's inner data and folds instead of the run's)."""
        c = self.config
        local = c.data_dir is not None or c.num_questions is not None
        source = ({"data_dir": data_dir} if data_dir is not None
                  else {"data_dir": self.plan.data.source} if local else {"dataset": self.plan.data.source})
        return dict(source, num_heads=spec.num_heads, method=spec.method, random_heads=spec.random_heads,
                    head_selection=spec.head_selection, effect_questions=spec.effect_questions,
                    effect_check_heads=spec.effect_check_heads, val_ratio=c.val_ratio, seed=c.seed,
                    num_folds=num_folds or c.num_folds, fold=fold, contiguous_folds=c.contiguous_folds,
                    prompt_format=c.prompt_format, sigma_data=c.sigma_data, probe_backend=c.probe_backend,
                    batch_size=c.fit_batch_size)

    def _collect_all_folds(self) -> bool:
        # one cache that every evaluated fold's fit reads (a single-fold run needs only its own)
        return self.config.folds is None or len(self.config.folds) > 1

    def fit_view(self, fold: int, spec):
        """The activations, labels and answers ``spec``'s fit on ``fold`` was computed from (controls.fit_view), read
        from the activation cache the fit filled; only the latest fold's is kept in memory (rows run fold by fold)."""
        if self._view is None or self._view[:2] != (fold, spec):
            from .controls import fit_view

            c = self.config
            model, tokenizer = self.session.model()
            clock = time.perf_counter()
            view = fit_view(model, tokenizer, self._fit_options(fold, spec), revision=c.revision,
                            cache_dir=c.cache_dir, collect_all_folds=self._collect_all_folds(), progress=c.progress)
            view.seconds = round(time.perf_counter() - clock, 3)
            self._view = (fold, spec, view)
        return self._view[2]

    def control(self, fold: int, fit: dict, variant: Variant) -> dict:
        """A control row's directions, built from the fold's ITI fit (``variant.extra["control"]``): random directions
        on its heads with its sigmas (random-matched), or, from the activations that fit read (no forward pass),
        random heads, label-shuffled or style directions (``controls``); saved beside the fits."""
        from ..artifact import file_sha256, save_directions

        clock = time.perf_counter()
        directions, view = self._control_directions(fold, fit, variant)
        path = self.plan.out / "directions" / f"fold_{fold}_{variant.name}.safetensors"
        save_directions(directions, path)
        record = dict(fit["record"], path=str(path), sha256=file_sha256(path), fit=f"{fit['record']['fit']}-{variant.name}",
                      control_of=fit["record"]["path"], control=variant.extra["control"],
                      control_seed=variant.extra.get("control_seed"),
                      control_seconds=round(time.perf_counter() - clock, 3),
                      # the activations came from the cache: the forward passes reading them made (0 after the fit)
                      control_forward_passes=view.forward_passes if view is not None else 0)
        return {"record": record, "directions": directions, "train_ids": fit["train_ids"]}

    def _control_directions(self, fold: int, fit: dict, variant: Variant):
        """(directions, the FitView they were built from or None) of a control row on ``fold``; every draw is seeded
        by (run seed, fold, draw[, layer]), so no vector or head set is shared between folds or draws."""
        from . import controls
        from ..select import matched_random_directions

        family, draw, seed = variant.extra["control"], int(variant.extra.get("control_seed", 0)), self.config.seed
        if family == "random-matched":
            return matched_random_directions(fit["directions"], draw, variant.extra.get("orthogonal", False),
                                             fold=fold, run_seed=seed), None
        view = self.fit_view(fold, variant.fit)
        if family == "random-heads":
            return controls.random_head_directions(fit["directions"], view, fold=fold, draw=draw, run_seed=seed), view
        if family == "label-shuffled":
            return controls.label_shuffled_directions(fit["directions"], view, fold=fold, draw=draw,
                                                      run_seed=seed), view
        if family == "style":
            return controls.style_directions(fit["directions"], view), view
        raise ITIError(f"{variant.name}: unknown control {family!r}")

    def saved_record(self, fold: int, name: str, key: dict) -> tuple:
        """(``folds/fold_<fold>_<name>.json``, the record saved there for exactly ``key``, else None)."""
        path = self.plan.out / "folds" / f"fold_{fold}_{name}.json"
        return path, saved_for(path, key)

    def auto_alpha(self, fold: int) -> dict:
        """The fold's alpha by the KL budget, measured on the main ITI fit of the fold (saved, reused on resume)."""
        from ..side_effects import alpha_for_kl_budget

        # the main ITI row ("iti") when there is one, else the first hooked row with alpha auto
        main = min((v for v in self.plan.variants if v.kind == "hf-iti" and v.alpha == AUTO),
                   key=lambda v: v.name != "iti")
        key = {"settings": self.plan.settings, "fit": main.fit.name, "heads": main.heads, "fold": fold}
        path, previous = self.saved_record(fold, "alpha_auto", key)
        if previous is not None:
            return previous
        c = self.config
        model, tokenizer = self.session.model()
        directions = self.fit(fold, main.fit)["directions"]
        directions = directions.top_k(main.heads) if main.heads else directions
        choice = alpha_for_kl_budget(model, tokenizer, directions, kl_budget=c.kl_budget, corpus=c.corpus,
                                     num_tokens=c.num_tokens, batch_size=c.batch_size, progress=c.progress,
                                     held_out_from=(c.num_docs, c.corpus_seed))
        choice.update(settings_hash=sha_of(key), fit=main.fit.name)
        write_json_sealed(path, choice)
        return choice

    def kl_match(self, fold: int, variant: Variant, control: dict) -> dict:
        """The alpha at which the control's directions cost the KL that the fold's ITI row (same fit, alpha and K,
        already resolved in ``variant``) costs on the KL sample; saved to ``folds/fold_<i>_<name>_kl_match.json``."""
        from ..side_effects import alpha_for_kl_target

        key = {"settings": self.plan.settings, "variant": variant.describe(), "fold": fold,
               "control_sha256": control["record"]["sha256"]}
        path, previous = self.saved_record(fold, f"{variant.name}_kl_match", key)
        if previous is not None:
            return previous
        meter = self.session.kl_meter()
        fitted = self.fit(fold, variant.fit)["directions"]
        fitted = fitted.top_k(variant.heads) if variant.heads else fitted
        target = meter(fitted, variant.alpha)
        mine = control["directions"].top_k(variant.heads) if variant.heads else control["directions"]
        match = alpha_for_kl_target(meter, mine, target, start=float(variant.alpha))
        match.update(settings_hash=sha_of(key), iti_alpha=variant.alpha, iti_num_heads=variant.heads)
        write_json_sealed(path, match)
        return match

    def selection_spec(self, variant: Variant) -> tuple[Variant, dict, str]:
        """(the row whose selection ``variant`` uses, its spec, the record's name): a row with its own ``select``
        spec (ITI's, the nested-strategy row) has its own selection; a control row with alpha select shares ITI's."""
        owner = variant if "select" in variant.extra else next(
            v for v in self.plan.variants if v.alpha == SELECT and "select" in v.extra)
        return owner, owner.extra["select"], "select" if owner.name == "iti" else f"{owner.name}_select"

    def nested_selection(self, fold: int, variant: Variant) -> dict:
        """alpha and K (and, where the spec lists several, the direction type and the head selection) for outer
        ``fold``, chosen on its training questions only: they become a local data folder with ``inner_folds`` folds of
        their own; for each inner fold and each (method, head selection), directions are fitted on the other inner
        folds, each grid point's KL is measured first (a point over the budget is not scored), and the rest of the grid
        is scored on the inner fold by the engine (``by``'s task); the best mean over inner folds wins (ties: the
        first in grid order: method, head selection, then smaller alpha and K first). Saved to
        ``folds/fold_<i>_select.json`` (``fold_<i>_<row>_select.json`` for another row; reused on resume)."""
        from ..artifact import load_directions
        from ..fit import fit_and_save
        from ..folds import fold_assignment, question_id
        from ..harness.engine import score_points
        from .aggregate import fold_columns
        from .subset import write_truthfulqa_subset

        main, spec, record_name = self.selection_spec(variant)
        key = {"settings": self.plan.settings, "variant": main.describe(), "fold": fold}
        path, previous = self.saved_record(fold, record_name, key)
        if previous is not None:
            return previous
        c = self.config
        model, tokenizer = self.session.model()
        assignment = fold_assignment(self.plan.data.questions, c.num_folds, c.seed, c.contiguous_folds)
        held_out = {q.strip() for q, f in zip(self.plan.data.questions, assignment) if f == fold}
        training = {q.strip() for q, f in zip(self.plan.data.questions, assignment) if f != fold}
        work = self.plan.out / "select" / f"fold_{fold}"
        sub = write_truthfulqa_subset(self.plan.data.source, work / "data", None, self.plan.data.binary_data, keep=training)
        strategies = [(m, h) for m in spec.get("methods", [main.fit.method])
                      for h in spec.get("head_selections", [main.fit.head_selection])]
        searched = len(strategies) > 1
        grid = [(m, h, a, k) for m, h in strategies for a in spec["alphas"] for k in spec["num_heads"]]
        task = SELECT_COLUMNS[spec["by"]]
        held_out_ids = {question_id(q) for q in held_out}
        scores, inner_records = [[] for _ in grid], []
        kl_per_point, unedited = [[] for _ in grid], []
        budget = spec.get("kl_budget")
        for inner in range(spec["inner_folds"]):
            metadata = dict(c.metadata, num_folds=spec["inner_folds"], fold=inner, seed=c.seed,
                            contiguous_folds=c.contiguous_folds, data_dir=sub["data_dir"])
            if sub["binary_data"] is not None:
                metadata["binary_data"] = sub["binary_data"]
            kls = [None] * len(grid)
            scored: dict[int, dict] = {}
            fits = []
            for method, selection in strategies:
                name = f"inner_{inner}" if not searched else f"inner_{inner}_{method}_{selection}"
                directions_path = work / "directions" / f"{name}.safetensors"
                options = self._fit_options(inner, replace(main.fit, method=method, head_selection=selection),
                                            data_dir=sub["data_dir"], num_folds=spec["inner_folds"])
                directions = reusable_inner_fit(directions_path, options, model)
                if directions is None:
                    fit_and_save(model, directions_path, tokenizer=tokenizer,
                                 cache_dir=c.cache_dir, revision=c.revision, progress=c.progress,
                                 collect_all_folds=True, write_plot=False, **options)
                    directions = load_directions(directions_path)
                points = [i for i, g in enumerate(grid) if g[:2] == (method, selection)]
                for i in points:  # KL first: a point over the budget is never scored
                    if budget:
                        kls[i] = self.session.kl_meter()(directions.top_k(grid[i][3]), grid[i][2])
                allowed = [i for i in points if kls[i] is None or kls[i] <= budget]
                # alpha 0 first (once per inner fold): the unedited reference, recorded, never chosen
                first = not fits
                settings = ([(0.0, None)] if first else []) + [grid[i][2:] for i in allowed]
                fits.append({"method": method, "head_selection": selection, "directions": str(directions_path),
                             "effect_check": json.loads(directions.metadata.get("effect_check", "null"))})
                if not settings:  # every point of this kind is over the KL budget: nothing to score
                    continue
                evaluations = score_points(model, tokenizer, [task], metadata, directions, settings,
                                           mc_positions=main.mc_positions, limit=c.limit, bootstrap_iters=0,
                                           per_task_metadata=instruction_metadata(main.instruction),
                                           apply_chat_template=c.apply_chat_template,
                                           system_instruction=c.system_instruction, max_length=c.max_length,
                                           batch_size=c.batch_size, max_batch_bytes=c.engine_max_batch_bytes)
                evaluated = set(evaluations[0]["question_ids"].get(task, []))
                fitted = set(json.loads(directions.metadata["train_question_ids"]))
                if evaluated & held_out_ids or evaluated & fitted:
                    raise ITIError(f"fold {fold}: nested selection scored a held-out or fitted question (inner fold "
                                   f"{inner}); the folds of fit and tasks disagree")
                if first:
                    unedited.append(fold_columns({"metrics": evaluations[0]["metrics"]})[spec["by"]][0])
                    evaluations = evaluations[1:]
                scored.update(zip(allowed, evaluations))
            if not scored:
                raise ITIError(f"fold {fold}: every point of the selection grid costs more than the KL budget "
                               f"{budget:g} on inner fold {inner} (smallest {min(kls):.3g}); add smaller alphas or K")
            for i in range(len(grid)):  # a point over the KL budget is not scored: it cannot be chosen
                scores[i].append(fold_columns({"metrics": scored[i]["metrics"]})[spec["by"]][0] if i in scored else None)
                kl_per_point[i].append(kls[i])
            inner_records.append({"inner_fold": inner, "evaluated_questions": len(evaluated),
                                  "fit_questions": len(fitted), "directions": fits[0]["directions"],
                                  **({"fits": fits} if searched else {})})
        means = [sum(s) / len(s) if s and None not in s else None for s in scores]
        if all(m is None for m in means):
            raise ITIError(f"fold {fold}: nested selection found no {spec['by']} value to choose by"
                           + (f" within the KL budget {budget:g} on every inner fold" if budget else ""))
        best = max((i for i, m in enumerate(means) if m is not None), key=lambda i: (means[i], -i))
        record = {"settings_hash": sha_of(key), "fold": fold, "by": spec["by"], "task": task,
                  "alpha": grid[best][2], "num_heads": grid[best][3], "inner_folds": inner_records,
                  "scored_by": "engine", "training_questions": len(training), "kl_budget": budget,
                  "kl_sample": self.session.kl_meter().describe() if budget else None,
                  "unedited": {"per_inner_fold": unedited, "mean": sum(unedited) / len(unedited)},
                  "grid": [{**({"method": m, "head_selection": h} if searched else {}), "alpha": a, "num_heads": k,
                            "per_inner_fold": s, "mean": mean, "kl_per_inner_fold": kl,
                            "kl_mean": sum(kl) / len(kl) if kl and None not in kl else None}
                           for (m, h, a, k), s, mean, kl in zip(grid, scores, means, kl_per_point)]}
        if searched:
            record.update(method=grid[best][0], head_selection=grid[best][1])
        write_json_sealed(path, record)
        return record

    # one fold x variant ---------------------------------------------------------------------------------------------
    def resolve(self, fold: int, variant: Variant):
        """(variant with its fold's alpha and K, its fit or control (None for an unedited row), the alpha-auto,
        selection and KL-match records); every record is saved, so resolving again reads them back."""
        key = (fold, variant.name)
        if key in self._resolved:
            return self._resolved[key]
        auto = selected = kl_matched = None
        if variant.alpha == SELECT:  # first: a searched direction type or head selection decides the fit
            selected = self.nested_selection(fold, variant)
            chosen = replace(variant.fit, method=selected.get("method", variant.fit.method),
                             head_selection=selected.get("head_selection", variant.fit.head_selection))
            variant = replace(variant, fit=chosen, alpha=selected["alpha"], heads=selected["num_heads"])
        fit = self.fit(fold, variant.fit) if variant.fit is not None and variant.alpha != 0 else None
        if fit is not None and is_control(variant):
            fit = self.control(fold, fit, variant)
        if variant.alpha == AUTO:
            auto = self.auto_alpha(fold)
            variant = replace(variant, alpha=auto["alpha"])
        if variant.extra.get("match_kl"):
            kl_matched = self.kl_match(fold, variant, fit)
            variant = replace(variant, alpha=kl_matched["alpha"])
        if "curve_scale" in variant.extra:  # a curve point: the row's own resolved alpha, scaled
            variant = replace(variant, alpha=float(variant.alpha) * float(variant.extra["curve_scale"]))
        self._resolved[key] = (variant, fit, auto, selected, kl_matched)
        return self._resolved[key]

    def run_one(self, fold: int, variant: Variant) -> dict:
        from ..harness.driver import run_tasks
        from ..harness.variants import variant_lm
        from ..judges.glue import keep_judged
        from ..side_effects import measure

        c = self.config
        model, tokenizer = self.session.model()
        described, settings_hash = variant.describe(), self.plan.fold_hash(fold, variant)
        variant, fit, auto, selected, kl_matched = self.resolve(fold, variant)
        clock = time.perf_counter()
        # before variant_lm: the engine adds each point's shift itself and refuses a model with hf-iti's hooks
        evaluation = self.engine_evaluation(fold, variant) if self.uses_engine(variant) else None
        work = self.plan.out / "directions"
        work.mkdir(parents=True, exist_ok=True)
        with variant_lm(variant, model, tokenizer, fit["record"]["path"] if fit else None,
                        fit["directions"] if fit else None, batch_size=c.batch_size, work_dir=work,
                        max_length=c.max_length) as (lm, logits_fns, lm_info):
            judged: list[dict] = []  # the judged answers, kept so that a rerun can finish an outage's judging
            if evaluation is None:
                with keep_judged() as judged:
                    evaluation = run_tasks(lm, list(c.tasks), self.plan.task_metadata(fold),
                                           per_task_metadata=instruction_metadata(variant.instruction),
                                           limit=c.limit, bootstrap_iters=c.bootstrap_iters,
                                           apply_chat_template=c.apply_chat_template,
                                           system_instruction=c.system_instruction, gen_kwargs=c.gen_kwargs)
                evaluation["model_info"] = dict(evaluation["model_info"], scored_by="lm-eval")
            self.session.evaluations += 1
            evaluated = set().union(*evaluation["question_ids"].values()) if evaluation["question_ids"] else set()
            leak = {"evaluated_questions": len(evaluated), "checked_against": None, "overlap": None}
            if fit is not None:
                overlap = evaluated & fit["train_ids"]
                leak = {"evaluated_questions": len(evaluated), "checked_against": fit["record"]["path"],
                        "directions_train_questions": len(fit["train_ids"]), "overlap": len(overlap)}
                if overlap:
                    raise ITIError(f"fold {fold} ({variant.name}): {len(overlap)} evaluated question(s) are in the "
                                   f"training questions of {fit['record']['path']} (e.g. {sorted(overlap)[0]}); "
                                   "the folds of fit and tasks disagree")
            side = None
            if c.side_effects:
                docs = self.session.corpus()
                base_fn, steered_fn = logits_fns
                if variant.kind == "hf":  # no edit: steered == base; measured once per run
                    if self.session.base_side_effects is None:
                        self.session.base_side_effects = measure(base_fn, base_fn, docs, c.batch_size,
                                                          device=execution_device(model),
                                                          progress=c.progress, desc="CE/KL base",
                                                          base_cache=self.session.base_logits)
                    side = dict(self.session.base_side_effects)
                else:
                    side = measure(base_fn, steered_fn, docs, c.batch_size, device=execution_device(model),
                                   progress=c.progress, desc=f"CE/KL fold {fold} {variant.name}",
                                   base_cache=self.session.base_logits)
                side = {k: v for k, v in side.items() if k != "per_doc"}
        return {
            "format": RESULTS_FORMAT, "fold": fold, "num_folds": c.num_folds, "variant": described,
            "alpha_used": variant.alpha, "alpha_auto": auto, "scored_by": evaluation["model_info"]["scored_by"],
            "num_heads_used": variant.heads or (variant.fit.num_heads if variant.fit else None),
            "selection": selected, "kl_match": kl_matched,
            "settings_hash": settings_hash, "metrics": evaluation["metrics"],
            "n_samples": evaluation["n_samples"], "question_ids": evaluation["question_ids"], "leak_check": leak,
            "per_question": evaluation["per_question"], "choice_loglikelihoods": evaluation["choice_loglikelihoods"],
            "judge_answers": judged,
            "directions": fit["record"] if fit else None, "model_info": dict(evaluation["model_info"], **lm_info),
            "side_effects": side, "seconds": round(time.perf_counter() - clock, 2), "package_version": __version__,
        }

    # the whole run -----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm.auto import tqdm

        plan, c = self.plan, self.config
        fold_results: dict[str, list[dict]] = {v.name: [] for v in plan.variants}
        resumed = []
        for job in tqdm(plan.jobs, desc=f"{plan.kind}: folds x variants", disable=not c.progress, unit="eval"):
            previous = plan.saved_result(job.fold, job.variant)
            if previous is not None:
                previous = self.judged_result(job.fold, job.variant, previous)
            if previous is not None:
                fold_results[job.variant.name].append(previous)
                resumed.append(job.path.name)
                continue
            result = self.run_one(job.fold, job.variant)
            write_json_sealed(job.path, result)
            fold_results[job.variant.name].append(result)
        results = summarise(plan, self.session, fold_results, resumed)
        # from the fold results, so a resumed row's records come from its fold file
        results["per_question"] = records.write_records(plan.out, fold_results)
        results.update(comparisons(plan, fold_results, results["rows"]))
        results["draw_summaries"] = agg.summarise_draws(results["rows"])
        if plan.kind == "validate":
            from .plots import pareto

            figure = pareto(results, plan.out / "pareto.png", title=f"{c.model}: MC gain against KL")
            results["plots"] = {"pareto": str(figure) if figure else None}
        write_json_atomic(plan.out / "results.json", results)
        write_text_atomic(plan.out / "table.md", table_markdown(results))
        return results

def reusable_inner_fit(path: Path, options: dict, model):
    """The directions at ``path`` when an earlier (interrupted) selection fitted them with exactly ``options`` on this
    model and this inner data (their metadata says so), else None: a resumed selection does not refit, nor re-rank
    heads by effect."""
    from ..artifact import load_directions
    from ..data import load_mc
    from ..fit import data_sha256, make_config, option_metadata
    from ..identity import fingerprint_metadata

    if not path.exists():
        return None
    try:
        directions = load_directions(path)
    except ITIError:
        return None
    cfg = make_config(**options)
    expected = dict(option_metadata(cfg), dataset_sha256=data_sha256(load_mc(cfg.source)),
                    model_fingerprint=fingerprint_metadata(model))
    found = {k: directions.metadata.get(k) for k in expected}
    return directions if found == expected else None


def execute(plan: Plan, session: ModelSession | None = None) -> dict:
    """Run every job of ``plan`` (resuming the ones on disk) and write results.json and table.md."""
    return Executor(plan, session).run()
