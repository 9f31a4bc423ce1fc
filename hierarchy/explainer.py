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
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import numpy as np

from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.estimators import Progress, default_budget, get_estimator
from longshap.hierarchy.games import MemoisedGame, pad_columns
from longshap.hierarchy.prompt import ClassificationPrompt, QAPrompt
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
from longshap.hierarchy.segmentation import LEVELS, ROOT, Document, FeatureTree
from longshap.hierarchy.subgames import MODES, RequestGame, UnitGame
from longshap.hierarchy.values import Target, ValueFunction, build_value_function
from longshap.hierarchy.values.label import label_token_ids, normalised_label_logprobs

if TYPE_CHECKING:  # models and scorer import torch: only once a model is needed
    from longshap.hierarchy.models import LoadedModel

QA_LEVELS = ("document", "sentence", "word")
CLASSIFICATION_LEVELS = ("word",)
DEFAULT_THRESHOLDS = {"document": 0.1, "sentence": 0.1, "word": 0.1, "token": 0.1}
DEFAULT_MAX_EXPANDED = {"document": 3, "sentence": 4, "word": 8, "token": 8}
VISIBLE_ANSWER_SHARE = 0.01
"""Answers decoded in under 1% of coalitions are hidden, as in TextGenSHAP."""
PROGRESS_INTERVAL_S = 0.5
MAX_NEW_TOKENS = 512
"""Longest greedy answer a request may ask for."""


def _documents(documents: Sequence) -> list[Document]:
    parsed = []
    for index, doc in enumerate(documents):
        if isinstance(doc, Document):
            parsed.append(doc)
        elif isinstance(doc, str):
            parsed.append(Document(doc))
        elif isinstance(doc, Mapping):
            text, title = doc.get("text"), doc.get("title", "") or ""
            if not isinstance(text, str):
                raise ValueError(f"documents[{index}].text: must be a string")
            if not isinstance(title, str):
                raise ValueError(f"documents[{index}].title: must be a string")
            parsed.append(Document(text, title))
        else:
            raise ValueError(f"documents[{index}]: expected a dict with 'text' (and optional 'title'), got {type(doc).__name__}")
    return parsed


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    """Between phases (tokenising, label ids, answer decoding): the model's layers poll it within them."""
    if should_stop is not None and should_stop():
        raise Cancelled("explanation cancelled")


def _levels(levels: Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    levels = tuple(default if levels is None else ([levels] if isinstance(levels, str) else levels))
    if not levels:
        raise ValueError("levels: at least one level is required")
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"levels: unknown level {level!r}; use {LEVELS}")
    if len(set(levels)) != len(levels) or ("word" in levels and "token" in levels):
        raise ValueError(f"levels: each level at most once, and word or token but not both; got {levels}")
    order = [LEVELS.index(level) if level != "token" else LEVELS.index("word") for level in levels]
    if order != sorted(order):
        raise ValueError(f"levels: must go from coarse to fine (document, sentence, word|token); got {levels}")
    return levels


def _per_level(option, defaults: Mapping[str, float | int | None], name: str, levels: Sequence[str]) -> dict:
    """Accept a number (all levels), a mapping by level name, or a sequence aligned with `levels`."""
    values = dict(defaults)
    if option is None:
        return values
    if isinstance(option, Mapping):
        unknown = set(option) - set(LEVELS)
        if unknown:
            raise ValueError(f"{name}: unknown level(s) {sorted(unknown)}")
        values.update(option)
    elif isinstance(option, (int, float)):
        values.update({level: option for level in LEVELS})
    else:
        option = list(option)
        if len(option) != len(levels):
            raise ValueError(f"{name}: expected {len(levels)} values (one per level), got {len(option)}")
        values.update(zip(levels, option))
    return values


def _check_thresholds(thresholds: Mapping) -> None:
    for level, value in thresholds.items():
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"thresholds[{level}]: must be a finite number >= 0, got {value!r}")


def _check_max_expanded(caps: Mapping) -> None:
    for level, value in caps.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"max_expanded[{level}]: must be a non-negative integer or None, got {value!r}")


@dataclass
class _Run:
    """Everything one explanation's level walk needs, fixed once the request is validated."""

    tree: FeatureTree
    request: RequestGame
    value_fn: ValueFunction
    value_name: str
    levels: tuple[str, ...]
    method: str
    budget: int | None
    seed: int
    mode: str
    thresholds: dict
    caps: dict
    full_value: np.ndarray
    empty_value: np.ndarray
    target_stderr: float | None
    on_progress: Callable[[ProgressEvent], None] | None
    started: float
    stats_before: dict
    answer_event: AnswerEvent


class Explainer:
    """Hierarchical Shapley explanations of a causal LM's answer."""

    def __init__(self, loaded: LoadedModel, max_batch_tokens: int = 4096, draft: LoadedModel | None = None) -> None:
        from longshap.hierarchy.scorer import ModelScorer

        self.loaded = loaded
        self.scorer = ModelScorer(loaded, max_batch_tokens=max_batch_tokens, draft=draft)

    @classmethod
    def from_pretrained(
        cls, model: str | None = None, max_batch_tokens: int = 4096, draft_model: str | None = None, **load_options
    ) -> "Explainer":
        """None or 'gemma-3-270m' loads the embedded default; otherwise a local Hugging Face directory.

        `draft_model` (same tokenizer, smaller) proposes tokens whenever an answer has to
        be decoded; `load_options` go to `hierarchy.models.load_model` (device, dtype,
        quantization, attn_implementation).
        """
        from longshap.hierarchy.models import load_model

        draft = load_model(draft_model, **load_options) if draft_model is not None else None
        return cls(load_model(model, **load_options), max_batch_tokens=max_batch_tokens, draft=draft)

    def explain(self, **request) -> Explanation:
        """Run the whole hierarchy and return the final explanation (see `explain_stream` for options)."""
        for event in self.explain_stream(**request):
            if isinstance(event, DoneEvent):
                return event.explanation
        raise RuntimeError("explanation stream ended without a result")

    def explain_stream(
        self,
        question: str | None = None,
        documents: Sequence | None = None,
        text: str | None = None,
        labels: Sequence[str] | None = None,
        target: str | None = None,
        levels: Sequence[str] | None = None,
        method: str = "permutation",
        budget: int | None = None,
        seed: int = 0,
        mode: str = "owen",
        thresholds=None,
        max_expanded=None,
        value: str | None = None,
        placeholder: str | None = None,
        instruction: str | None = None,
        target_stderr: float | None = None,
        max_new_tokens: int = 20,
        speculative: bool = False,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator:
        """Yield an AnswerEvent, then per level a LevelStartEvent and a LevelEvent, then a DoneEvent.

        QA: `question` and `documents` ([{"title", "text"}]); the target is `target` or
        the greedy answer to the full prompt (stopping at end-of-sequence or newline).
        Classification: `text` and `labels`; explains `target` or the predicted label.
        `budget` counts model evaluations per level; `placeholder` replaces removed
        units instead of dropping them; `speculative` verifies already-seen answers of
        the `answers` value function in one pass (off by default: on a 2-core CPU with
        short answers it measured 0.92x, see bench/speculative.py); `should_stop` is
        polled between batches.
        """
        started = time.perf_counter()
        stats_before = self.scorer.stats.as_dict()
        self._check_common(method, budget, seed, mode, target_stderr, max_new_tokens)
        prompt, classification = self._prompt(question, documents, text, labels, placeholder, instruction)
        levels = _levels(levels, CLASSIFICATION_LEVELS if classification else QA_LEVELS)
        thresholds = _per_level(thresholds, DEFAULT_THRESHOLDS, "thresholds", levels)
        _check_thresholds(thresholds)
        caps = _per_level(max_expanded, DEFAULT_MAX_EXPANDED, "max_expanded", levels)
        _check_max_expanded(caps)

        self.scorer.should_stop = should_stop
        try:
            tree = FeatureTree(prompt.documents, self.scorer.tokenizer)
            _check_stop(should_stop)
            value, target_spec, answer_event = self._target(prompt, classification, tree, target, value, max_new_tokens)
            _check_stop(should_stop)
            yield answer_event
            value_fn = build_value_function(value, self.scorer, replace(target_spec, speculative=bool(speculative)))
            request = RequestGame(lambda absent: prompt.render(tree, absent), value_fn, should_stop)
            top_units = frozenset(tree.expand(ROOT, "document"))
            full_value, empty_value = request.values([frozenset(), top_units])
            yield from self._levels(
                _Run(
                    tree, request, value_fn, value, levels, method, budget, seed, mode, thresholds, caps,
                    _as_row(full_value), _as_row(empty_value), target_stderr, on_progress, started, stats_before, answer_event,
                )
            )
        finally:
            self.scorer.should_stop = None

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
        prompt, classification = self._prompt(question, documents, text, labels, placeholder, instruction)
        tree = FeatureTree(prompt.documents, self.scorer.tokenizer)
        _, target_spec, _ = self._target(prompt, classification, tree, target, None, max_new_tokens)
        value_fn = build_value_function("label" if classification else "probability", self.scorer, target_spec)
        request = RequestGame(lambda absent: prompt.render(tree, absent), value_fn)
        units = tree.expand(ROOT, _levels([level], ())[0])

        def probability(keep: np.ndarray) -> np.ndarray:
            keep = np.asarray(keep, dtype=bool).reshape(-1, len(units))
            values = request.values([frozenset(u for u, kept in zip(units, row) if not kept) for row in keep])[:, 0]
            return np.exp(values) if classification else values

        return units, probability

    @staticmethod
    def _prompt(question, documents, text, labels, placeholder, instruction) -> tuple[QAPrompt | ClassificationPrompt, bool]:
        """Validate the prompt fields; classification when text or labels are given."""
        extra = {"instruction": instruction} if instruction else {}
        classification = text is not None or labels is not None
        if classification and (question is not None or documents is not None):
            raise ValueError("give either question and documents (QA) or text and labels (classification), not both")
        if classification:
            if text is None or labels is None:
                raise ValueError("classification needs both text and labels")
            return ClassificationPrompt(text, list(labels), placeholder=placeholder, **extra), True
        if question is None or documents is None:
            raise ValueError("QA needs question and documents (or give text and labels for classification)")
        return QAPrompt(question, _documents(documents), placeholder=placeholder, **extra), False

    def _target(self, prompt, classification: bool, tree: FeatureTree, target, value, max_new_tokens) -> tuple[str, Target, AnswerEvent]:
        """The value function's name, what it explains, and the event announcing it."""
        full_prompt = prompt.render(tree)
        if classification:
            value = value or "label"
            if value != "label":
                raise ValueError(f"value: classification uses the 'label' value function, not {value!r}")
            return (value, *self._classification_target(prompt, full_prompt, target, max_new_tokens))
        value = value or "logprob"
        if value == "label":
            raise ValueError("value: 'label' is for classification (text and labels)")
        return (value, *self._qa_target(full_prompt, target, max_new_tokens))

    @staticmethod
    def _check_common(method, budget, seed, mode, target_stderr, max_new_tokens) -> None:
        get_estimator(method)
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"budget: must be a positive integer, got {budget!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
        if target_stderr is not None and (not isinstance(target_stderr, (int, float)) or not np.isfinite(target_stderr) or target_stderr <= 0):
            raise ValueError(f"target_stderr: must be a positive number, got {target_stderr!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens: must be an integer in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}")

    def _qa_target(self, full_prompt: str, target: str | None, max_new_tokens: int) -> tuple[Target, AnswerEvent]:
        if target is not None:
            if not isinstance(target, str) or not target.strip():
                raise ValueError("target: must be a non-empty answer string (or omit it to explain the greedy answer)")
            return Target(full_prompt, answer=target.strip(), max_new_tokens=max_new_tokens), AnswerEvent(target.strip(), "given")
        answer = self.scorer.decode(self.scorer.greedy([full_prompt], max_new_tokens)[0])
        if not answer:
            raise ValueError("the model's greedy answer to the full prompt is empty; pass target= to explain a given answer")
        return Target(full_prompt, answer=answer, max_new_tokens=max_new_tokens), AnswerEvent(answer, "generated")

    def _classification_target(self, prompt: ClassificationPrompt, full_prompt: str, target: str | None, max_new_tokens: int) -> tuple[Target, AnswerEvent]:
        ids = label_token_ids(self.scorer, full_prompt, prompt.labels)
        probabilities = np.exp(normalised_label_logprobs(self.scorer, [full_prompt], ids)[0])
        by_label = {label: float(p) for label, p in zip(prompt.labels, probabilities)}
        if target is None:
            index, source = int(np.argmax(probabilities)), "predicted"
        elif target in prompt.labels:
            index, source = prompt.labels.index(target), "given"
        else:
            raise ValueError(f"target: {target!r} is not one of the labels {prompt.labels}")
        label = prompt.labels[index]
        return (
            Target(full_prompt, labels=prompt.labels, label_index=index, max_new_tokens=max_new_tokens),
            AnswerEvent(label, source, by_label),
        )

    def _levels(self, run: _Run) -> Iterator:
        tree, request, value_fn, levels = run.tree, run.request, run.value_fn, run.levels
        estimator = get_estimator(run.method)
        parents = [ROOT]
        results: list[Level] = []
        for depth, level in enumerate(levels):
            level_started = time.perf_counter()
            evaluations_before = request.evaluations
            tokens_before = (self.scorer.stats.forward_tokens, self.scorer.stats.reused_tokens)
            groups = [(parent, tree.expand(parent, level)) for parent in parents]
            groups = [(parent, children) for parent, children in groups if children]
            budgets = self._split_budget(run.budget, run.method, [len(children) for _, children in groups])
            placeholder_features = [self._feature(tree, unit, 0.0, 0.0, None, []) for _, children in groups for unit in children]
            yield LevelStartEvent(level, placeholder_features, sum(budgets))

            level_values, level_stderr, order = [], [], []
            for index, ((parent, children), group_budget) in enumerate(zip(groups, budgets)):
                game = MemoisedGame(UnitGame(request, tree, parent, children, run.mode))
                progress = self._progress_callback(run.on_progress, level, children, sum(budgets), request, evaluations_before)
                rng = np.random.default_rng([run.seed, depth, index])
                result = estimator.attribute(game, group_budget, rng, run.target_stderr, progress)
                level_values.append(result.values)
                level_stderr.append(result.stderr)
                order.extend(children)

            values = pad_columns(level_values)
            stderr = pad_columns(level_stderr)
            last = depth == len(levels) - 1
            expanded = set() if last else self._choose_expansions(
                order, values, stderr, (run.full_value, run.empty_value), value_fn, run.thresholds[level], run.caps[level]
            )
            features = [
                self._feature(tree, unit, values[i], stderr[i], value_fn, expanded)
                for i, unit in enumerate(order)
            ]
            result_level = Level(
                level, features, request.evaluations - evaluations_before, run.thresholds[level], run.method,
                round(time.perf_counter() - level_started, 3),
                forward_tokens=self.scorer.stats.forward_tokens - tokens_before[0],
                reused_tokens=self.scorer.stats.reused_tokens - tokens_before[1],
            )
            results.append(result_level)
            yield LevelEvent(result_level)
            parents = [unit for unit in order if unit in expanded]
            if not parents:
                break

        yield DoneEvent(self._explanation(run, results))

    @staticmethod
    def _split_budget(budget: int | None, method: str, sizes: Sequence[int]) -> list[int]:
        """Share a per-level budget among the level's games in proportion to their size."""
        if budget is None:
            return [default_budget(method, n) for n in sizes]
        weights = np.array([n + 1 for n in sizes], dtype=float)
        shares = np.floor(budget * weights / weights.sum()).astype(int)
        return [max(1, int(share)) for share in shares]

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

    @staticmethod
    def _visible_columns(value_fn) -> list[int]:
        counts = getattr(value_fn, "counts", None)
        if counts is None:
            return list(range(len(value_fn.columns)))
        total = max(sum(counts), 1)
        return [c for c, count in enumerate(counts) if c == 0 or count / total >= VISIBLE_ANSWER_SHARE]

    def _choose_expansions(self, order, values, stderr, reference, value_fn, threshold, cap) -> set[str]:
        """TextGenSHAP's rule on every visible output: expand when sign*value - stderr >= threshold * |effect|."""
        columns = [c for c in self._visible_columns(value_fn) if c < values.shape[1]]
        full, empty = (np.pad(r, (0, max(0, values.shape[1] - len(r))))[columns] for r in reference)
        effect = full - empty
        scale = float(np.max(np.abs(effect))) if len(effect) else 0.0
        if scale == 0.0:
            return set()
        sign = np.where(effect >= 0, 1.0, -1.0)
        importance = np.max(sign * values[:, columns] - stderr[:, columns], axis=1)
        passing = [i for i in np.argsort(-importance, kind="stable") if importance[i] >= threshold * scale]
        if cap is not None:
            passing = passing[:cap]
        return {order[i] for i in passing}

    def _feature(self, tree, unit_id, value_row, stderr_row, value_fn, expanded) -> Feature:
        unit = tree.units[unit_id]
        values = np.atleast_1d(value_row)
        stderr = np.atleast_1d(stderr_row)
        by_answer = None
        if value_fn is not None and getattr(value_fn, "counts", None) is not None:
            by_answer = {value_fn.columns[c]: float(values[c]) for c in self._visible_columns(value_fn) if c < len(values)}
        return Feature(
            id=unit.id, parent=unit.parent, text=unit.text, start=unit.start, end=unit.end,
            value=float(values[0]), stderr=float(stderr[0]), expanded=unit_id in expanded, doc=unit.doc,
            title=tree.documents[unit.doc].title, token_start=unit.token_start, token_end=unit.token_end,
            values_by_answer=by_answer,
        )

    def _explanation(self, run: _Run, levels: list[Level]) -> Explanation:
        value_fn = run.value_fn
        stats = {k: v - run.stats_before[k] for k, v in self.scorer.stats.as_dict().items()}
        stats["wall_seconds"] = round(time.perf_counter() - run.started, 3)
        stats["coalitions"] = run.request.evaluations
        answers = None
        counts = getattr(value_fn, "counts", None)
        if counts is not None:
            total = max(sum(counts), 1)
            answers = [
                {"answer": value_fn.columns[c], "share": counts[c] / total}
                for c in self._visible_columns(value_fn)
            ]
        full, empty = float(run.full_value[0]), float(run.empty_value[0])
        return Explanation(
            answer=run.answer_event.answer, levels=levels, stats=stats, value_function=run.value_name, mode=run.mode,
            total_effect=full - empty, full_value=full, empty_value=empty,
            label_probabilities=run.answer_event.label_probabilities, answers=answers,
        )


def _as_row(value) -> np.ndarray:
    return np.atleast_1d(np.asarray(value, dtype=float))

