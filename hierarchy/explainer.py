"""The hierarchy: documents, then sentences of the documents that matter, then their words.

Each level is a set of games, one per expanded unit (the root at the first level).
After a level is estimated, a unit is expanded when its importance (its value in the
direction of the total effect, minus its standard error) reaches the level's
threshold times |v(full) - v(empty)|, so thresholds mean the same on every input;
at most `max_expanded` units per level are expanded, the most important first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from longshap.hierarchy.allocation import INDIFFERENCE, Allocation, Pooled, expansion_could_change, run_in_rounds, unsettled_units
from longshap.hierarchy.engines.base import GRADIENTS, CacheScope, Engine, RunContext
from longshap.hierarchy.engines.view import ModelView
from longshap.hierarchy.estimators import Progress, get_estimator
from longshap.hierarchy.estimators.base import WithinBudget
from longshap.hierarchy.expansion import choose_expansions, importance, split_budget
from longshap.hierarchy.request import ExplainRequest, RequestError
from longshap.hierarchy.games import MemoisedGame, pad_columns
from longshap.hierarchy.kv_blend import SelfCheck, check_engine, start_blend
from longshap.hierarchy.prompt import QAPrompt
from longshap.hierarchy.gradients import UNSIGNED_METHODS, TokenAttributions, is_gradient_method
from longshap.hierarchy.results import (
    AnswerEvent,
    DoneEvent,
    Explanation,
    Feature,
    Level,
    LevelEvent,
    LevelStartEvent,
    ProgressEvent,
)
from longshap.hierarchy.segmentation import ROOT, FeatureTree
from longshap.hierarchy.subgames import RequestGame, UnitGame
from longshap.hierarchy.targets import explained_target, request_prompt
from longshap.hierarchy.values import ValueFunction, build_value_function

if TYPE_CHECKING:  # models and engines import torch: only once a model is needed
    from longshap.hierarchy.models import LoadedModel

PROGRESS_INTERVAL_S = 0.5


@dataclass
class _Run:
    """Everything one explanation's level walk needs, fixed once the request is validated."""

    request: ExplainRequest
    view: ModelView
    tree: FeatureTree
    game: RequestGame
    value_fn: ValueFunction
    full_value: np.ndarray
    empty_value: np.ndarray
    on_progress: Callable[[ProgressEvent], None] | None
    started: float
    answer_event: AnswerEvent
    allocation: Allocation | None = None
    """Adaptive allocation (None: every game spends its budget in one run)."""
    gradients: TokenAttributions | None = None
    """Token attributions of a gradient method, computed once and summed onto every level's units."""
    self_check: SelfCheck | None = None
    """kv_mode blend: the check that kept it on or turned it off."""


class Explainer:
    """Hierarchical Shapley explanations of a causal LM's answer.

    Safe to share between threads: each request gets its own run context (stop flag,
    statistics, prefix states), and the engine is the only shared part.
    """

    def __init__(
        self, engine: Engine | LoadedModel, cache_scope: CacheScope | None = None, max_level_budget: int | None = None,
        max_players: int | None = None,
    ) -> None:
        """`engine` runs the model (a `LoadedModel` gets the transformers engine); `cache_scope`, when given, is
        shared by every request (their prefix states then outlive them), else each request keeps its own;
        `max_level_budget` caps what a level plans when a request leaves the budget to the estimators' defaults;
        `max_players` refuses a game with more units (its memory grows with players times budget)."""
        if not isinstance(engine, Engine):
            from longshap.hierarchy.engines.hf_engine import TransformersEngine

            engine = TransformersEngine(engine)
        self.engine: Engine = engine
        self.cache_scope = cache_scope
        self.max_level_budget = max_level_budget
        self.max_players = max_players

    @property
    def architecture(self) -> str:
        return self.engine.architecture

    @classmethod
    def from_pretrained(
        cls, model: str | None = None, engine: str = "auto", draft_model: str | None = None, engine_options: dict | None = None,
        threads: int | None = None, **load_options,
    ) -> "Explainer":
        """None or 'gemma-3-270m' loads the embedded default; otherwise a local Hugging Face directory or .gguf file.

        `engine` picks what runs it (`hierarchy.engines.loading`): transformers, llamacpp,
        openai (a server, named by base_url and remote_model), or auto. `draft_model` (same
        tokenizer, smaller) proposes tokens whenever an answer has to be decoded;
        `engine_options` go to the engine's constructor (max_batch_tokens, ...); `threads`
        is llama.cpp's thread count (torch's is the process's: `torch.set_num_threads`);
        `load_options` to `hierarchy.models.load_model` (device, dtype, quantization,
        attn_implementation, weights).
        """
        from longshap.hierarchy.engines.loading import load_engine

        return cls(load_engine(model, engine, draft_model, engine_options, threads, **load_options))

    def model_view(self, should_stop: Callable[[], bool] | None = None, deadline: float | None = None) -> ModelView:
        """A new request's view of the engine: its own stop flag, deadline, statistics and prefix states."""
        scope = self.cache_scope if self.cache_scope is not None else CacheScope()
        return ModelView(self.engine, RunContext(should_stop, deadline, cache=scope))

    def explain(self, request: ExplainRequest | None = None, **options) -> Explanation:
        """Run the whole hierarchy and return the final explanation (see `explain_stream` for options)."""
        for event in self.explain_stream(request, **options):
            if isinstance(event, DoneEvent):
                return event.explanation
        raise RuntimeError("explanation stream ended without a result")

    def explain_stream(
        self,
        request: ExplainRequest | None = None,
        *,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        deadline: float | None = None,
        **options,
    ) -> Iterator:
        """Yield an AnswerEvent, then per level a LevelStartEvent and a LevelEvent, then a DoneEvent.

        Give a prepared `ExplainRequest` or its options (see `ExplainRequest.build`):
        QA takes `question` and `documents` ([{"title", "text"}]) and explains `target` or
        the greedy answer to the full prompt (stopping at end-of-sequence or newline);
        classification takes `text` and `labels` and explains `target` or the predicted
        label. `budget` counts model evaluations per level; `placeholder` replaces removed
        units instead of dropping them; `speculative` verifies already-seen answers of the
        `answers` value function in one pass (off by default, see bench/speculative.py);
        `should_stop` is polled between batches and decoder layers, and the run stops
        as if cancelled after `deadline` (time.monotonic()).
        The request is checked here, before the first event is asked for, so a bad one
        fails at the call (RequestError) rather than when the stream is consumed.
        Gradient methods ("integrated_gradients", "saliency", "input_x_gradient", see
        hierarchy.gradients) take `baseline` ("zero" or "pad", Integrated Gradients only)
        and read `budget` as Integrated Gradients' steps. `adaptive` runs each level's games
        in rounds and stops once its expansion decisions and top-`max_expanded` order are
        settled at `confidence` (see `hierarchy.allocation`); `total_budget` (implies
        adaptive) bounds the evaluations of all levels together.
        """
        if request is None:
            request = ExplainRequest.build(**options)
        elif options:
            raise TypeError(f"give a prepared ExplainRequest or its options, not both (got {sorted(options)})")
        if is_gradient_method(request.method) and GRADIENTS not in self.engine.capabilities:
            raise RequestError("method", f"{request.method} needs the model's gradients, which the {type(self.engine).__name__} engine does not offer")
        view = self.model_view(should_stop, deadline)
        if request.kv_mode == "blend":
            check_engine(view)
        return self._stream(request, on_progress, view)

    def _stream(self, request: ExplainRequest, on_progress, view: ModelView) -> Iterator:
        started = time.perf_counter()
        prompt = request_prompt(request)
        stop = view.context.stopped
        tree = FeatureTree(prompt.documents, view.token_offsets)
        self._check_players(ROOT, request.levels[0], tree.expand(ROOT, request.levels[0]))
        view.context.check()
        target_spec, answer_event = explained_target(view, prompt, request, tree)
        view.context.check()
        yield answer_event
        value_fn = build_value_function(request.value, view, replace(target_spec, speculative=request.speculative))
        game = RequestGame(lambda absent: prompt.render(tree, absent), value_fn, stop)
        self_check = None
        if request.kv_mode == "blend":
            assert isinstance(prompt, QAPrompt), "the request's rules refuse blend for classification"
            self_check = start_blend(view, prompt, tree, game, value_fn, request)
        top_units = frozenset(tree.expand(ROOT, "document"))
        full_value, empty_value = game.values([frozenset(), top_units])
        gradients = self._gradients(view, prompt, tree, value_fn, request) if is_gradient_method(request.method) else None
        yield from self._levels(
            _Run(
                request, view, tree, game, value_fn, _as_row(full_value), _as_row(empty_value), on_progress, started,
                answer_event, request.allocation, gradients, self_check,
            )
        )

    def probability_function(
        self,
        level: str,
        question: str | None = None,
        documents: Sequence | None = None,
        text: str | None = None,
        labels: Sequence[str] | None = None,
        target: str | None = None,
        placeholder: str | None = None,
        instruction: str | None = None,
        max_new_tokens: int = 20,
    ) -> tuple[list[str], Callable[[np.ndarray], np.ndarray]]:
        """The units of `level` and p(explained output | only the units kept in each row), for `hierarchy.metrics`.

        The output is the same one `explain` would explain for this request (the given
        target, the greedy answer, or the predicted label); unit ids match its features.
        """
        request = ExplainRequest.build(
            question=question, documents=documents, text=text, labels=labels, target=target, placeholder=placeholder,
            instruction=instruction, max_new_tokens=max_new_tokens, levels=[level],
        )
        prompt = request_prompt(request)
        view = self.model_view()
        tree = FeatureTree(prompt.documents, view.token_offsets)
        target_spec, _ = explained_target(view, prompt, request, tree)
        value_fn = build_value_function("label" if request.classification else "probability", view, target_spec)
        game = RequestGame(lambda absent: prompt.render(tree, absent), value_fn)
        units = tree.expand(ROOT, level)

        def probability(keep: np.ndarray) -> np.ndarray:
            keep = np.asarray(keep, dtype=bool).reshape(-1, len(units))
            values = game.values([frozenset(u for u, kept in zip(units, row) if not kept) for row in keep])[:, 0]
            return np.exp(values) if request.classification else values

        return units, probability

    @staticmethod
    def _gradients(view: ModelView, prompt, tree: FeatureTree, value_fn, request: ExplainRequest) -> TokenAttributions:
        from longshap.hierarchy.gradients import token_attributions

        starts = prompt.text_starts(tree)
        ends = [start + len(doc.text) for start, doc in zip(starts, prompt.documents)]
        return token_attributions(view, prompt.render(tree), starts, ends, value_fn, request.method, request.baseline, request.budget)

    def _levels(self, run: _Run) -> Iterator:
        tree, game, value_fn, options = run.tree, run.game, run.value_fn, run.request
        estimator = None if run.gradients is not None else WithinBudget(get_estimator(options.method))
        parents = [ROOT]
        results: list[Level] = []
        evaluations_at_start = game.evaluations
        for depth, level in enumerate(options.levels):
            level_started = time.perf_counter()
            last = depth == len(options.levels) - 1
            evaluations_before = game.evaluations
            stats = run.view.stats
            tokens_before = (stats.forward_tokens, stats.reused_tokens)
            groups = [(parent, tree.expand(parent, level)) for parent in parents]
            groups = [(parent, children) for parent, children in groups if children]
            for parent, children in groups:
                self._check_players(parent, level, children)
            order = [unit for _, children in groups for unit in children]
            if run.gradients is not None:  # one gradient computation, before the walk, serves every level
                budgets = [0] * len(groups)
                planned = run.gradients.forward_rows if depth == 0 else 0
            else:
                assert estimator is not None
                level_budget = options.budget
                if run.allocation is not None:
                    spent = game.evaluations - evaluations_at_start
                    level_budget = run.allocation.level_budget(options.budget, spent, len(options.levels) - depth)
                    if level_budget is not None and level_budget < 1:
                        break  # the total budget is spent: the explanation ends at the previous level
                budgets = split_budget(level_budget, estimator, [len(children) for _, children in groups], self.max_level_budget)
                planned = sum(budgets)
            placeholder_features = [self._feature(tree, unit, 0.0, 0.0, None, []) for unit in order]
            yield LevelStartEvent(level, placeholder_features, planned)

            if run.gradients is not None:
                level_values = [run.gradients.for_units(tree, children) for _, children in groups]
                level_stderr = [np.full_like(v, np.nan) for v in level_values]  # nothing sampled: not applicable
                used = [options.method]
            else:
                assert estimator is not None
                games = [MemoisedGame(UnitGame(game, tree, parent, children, options.mode)) for parent, children in groups]
                rngs = [np.random.default_rng([options.seed, depth, index]) for index in range(len(groups))]
                progress = [
                    self._progress_callback(run.on_progress, level, children, planned, game, evaluations_before) for _, children in groups
                ]
                estimates: list = []
                if run.allocation is None:
                    estimates = [
                        estimator.attribute(unit_game, group_budget, rng, options.target_stderr, send)
                        for unit_game, group_budget, rng, send in zip(games, budgets, rngs, progress)
                    ]
                else:
                    sends = [send for send in progress if send is not None]
                    estimates = run_in_rounds(
                        estimator, games, budgets, rngs, self._unsettled_games(run, level, last, groups, budgets),
                        (lambda index, snapshot: progress[index](snapshot)) if sends else None,
                    )
                level_values = [e.values for e in estimates]
                level_stderr = [e.stderr for e in estimates]
                used = [e.method for e in estimates]

            values = pad_columns(level_values)
            stderr = pad_columns(level_stderr)
            unsettled = None
            if run.allocation is not None and run.gradients is None:
                unsettled = [unit for unit, flag in zip(order, self._unsettled_units(run, level, last, values, stderr)) if flag]
            # Unsigned saliency is not in the value's units: its threshold is a share of the level's total saliency.
            reference = (values.sum(axis=0), np.zeros(values.shape[1])) if options.method in UNSIGNED_METHODS else (run.full_value, run.empty_value)
            expanded = set() if last else choose_expansions(
                order, values, stderr, reference, value_fn, options.thresholds[level], options.max_expanded[level]
            )
            features = [
                self._feature(tree, unit, values[i], stderr[i], value_fn, expanded)
                for i, unit in enumerate(order)
            ]
            evaluations = planned if run.gradients is not None else game.evaluations - evaluations_before
            result_level = Level(
                level, features, evaluations, options.thresholds[level], "+".join(dict.fromkeys(name for names in used for name in names.split("+"))),
                round(time.perf_counter() - level_started, 3),
                forward_tokens=stats.forward_tokens - tokens_before[0],
                reused_tokens=stats.reused_tokens - tokens_before[1], unsettled=unsettled,
            )
            results.append(result_level)
            yield LevelEvent(result_level)
            parents = [unit for unit in order if unit in expanded]
            if not parents:
                break

        yield DoneEvent(self._explanation(run, results))

    def _unsettled_units(
        self, run: _Run, level: str, last: bool, values: np.ndarray, stderr: np.ndarray, shrink: np.ndarray | None = None
    ) -> np.ndarray:
        """The adaptive stopping rule, per unit: is its expansion decision or top-k rank still unsettled?

        With `shrink` (per unit, the factor its standard error would fall by once its game
        spent its whole budget), only decisions the rest of the budget could settle count
        (see `unsettled_units`), and so do units whose expansion that budget could change
        (`expansion_could_change`).
        """
        allocation = run.allocation
        assert allocation is not None
        measured = importance(values, stderr, (run.full_value, run.empty_value), run.value_fn)
        if measured is None:  # no total effect: nothing is expanded and every value is noise around zero
            return np.zeros(len(values), dtype=bool)
        scores, score_stderr, scale = measured
        final = None if shrink is None else score_stderr * shrink
        threshold = None if last else run.request.thresholds[level] * scale
        unsettled = unsettled_units(
            scores, score_stderr, threshold, run.request.max_expanded[level], allocation.z, INDIFFERENCE * scale, final
        )
        if final is not None and threshold is not None:
            unsettled |= expansion_could_change(scores, score_stderr, final, threshold)
        return unsettled

    def _unsettled_games(
        self, run: _Run, level: str, last: bool, groups, budgets: Sequence[int]
    ) -> Callable[[list[Pooled]], list[bool]]:
        """Which games hold a unit that another round could settle (see `_unsettled_units`): only those get one.

        A game's standard errors are projected to shrink as 1/sqrt(evaluations), from what
        it has spent to its whole budget: pooled rounds weigh their samples.
        """
        bounds = np.cumsum([0, *(len(children) for _, children in groups)])

        def unsettled(pools: list[Pooled]) -> list[bool]:
            shrink = np.repeat(
                [np.sqrt(min(1.0, max(p.evaluations, 1) / budget)) for p, budget in zip(pools, budgets)], np.diff(bounds)
            )
            flags = self._unsettled_units(
                run, level, last, pad_columns([p.values for p in pools]), pad_columns([p.stderr for p in pools]), shrink
            )
            return [bool(flags[start:end].any()) for start, end in zip(bounds[:-1], bounds[1:])]

        return unsettled

    def _check_players(self, parent: str, level: str, children: Sequence[str]) -> None:
        """Refuse a game with more players than `max_players`, before any of its work."""
        if self.max_players is not None and len(children) > self.max_players:
            where = "the request" if parent == ROOT else parent
            raise RequestError(
                "levels", f"{where} has {len(children)} {level} units, more than the {self.max_players} one game may have "
                "(max_players); explain a coarser level first"
            )

    def _progress_callback(self, on_progress, level, children, planned, request, evaluations_before):
        if on_progress is None:
            return None
        last_sent = [0.0]

        def send(progress: Progress) -> None:
            now = time.perf_counter()
            if now - last_sent[0] < PROGRESS_INTERVAL_S:
                return
            last_sent[0] = now
            values = np.asarray(progress.values).reshape(len(children), -1)[:, 0]
            stderr = np.asarray(progress.stderr).reshape(len(children), -1)[:, 0]
            on_progress(
                ProgressEvent(
                    level, request.evaluations - evaluations_before, planned,
                    {u: float(v) for u, v in zip(children, values)}, {u: float(s) for u, s in zip(children, stderr)},
                )
            )

        return send

    def _feature(self, tree, unit_id, value_row, stderr_row, value_fn, expanded) -> Feature:
        unit = tree.units[unit_id]
        values = np.atleast_1d(value_row)
        stderr = np.atleast_1d(stderr_row)
        by_answer = None
        if value_fn is not None and value_fn.shares() is not None:
            by_answer = {value_fn.columns[c]: float(values[c]) for c in value_fn.visible_columns() if c < len(values)}
        tokens = getattr(value_fn, "token_columns", None)
        by_token = [float(v) for v in values[1 : 1 + len(tokens)]] if tokens is not None and len(values) > len(tokens) else None
        return Feature(
            id=unit.id, parent=unit.parent, text=unit.text, start=unit.start, end=unit.end,
            value=float(values[0]), stderr=float(stderr[0]), expanded=unit_id in expanded, doc=unit.doc,
            title=tree.documents[unit.doc].title, token_start=unit.token_start, token_end=unit.token_end,
            values_by_answer=by_answer, values_by_token=by_token,
        )

    def _explanation(self, run: _Run, levels: list[Level]) -> Explanation:
        value_fn = run.value_fn
        stats: dict = run.view.stats.as_dict()
        stats["wall_seconds"] = round(time.perf_counter() - run.started, 3)
        stats["coalitions"] = run.game.evaluations
        shares = value_fn.shares()
        answers = None if shares is None else [
            {"answer": value_fn.columns[c], "share": shares[c]} for c in value_fn.visible_columns()
        ]
        full, empty = float(run.full_value[0]), float(run.empty_value[0])
        extras = {}
        if run.gradients is not None:
            extras["gradients"] = run.gradients.summary()
            stats["gradient_rows"] = run.gradients.forward_rows
        return Explanation(
            answer=run.answer_event.answer, levels=levels, stats=stats, value_function=run.request.value, mode=run.request.mode,
            total_effect=full - empty, full_value=full, empty_value=empty,
            label_probabilities=run.answer_event.label_probabilities, answers=answers,
            answer_tokens=getattr(value_fn, "token_columns", None), extras=extras,
            self_check=run.self_check.as_dict() if run.self_check is not None else None,
        )


def _as_row(value) -> np.ndarray:
    return np.atleast_1d(np.asarray(value, dtype=float))

