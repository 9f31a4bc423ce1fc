from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Document(_message.Message):
    __slots__ = ("title", "text")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    title: str
    text: str
    def __init__(self, title: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class QAPrompt(_message.Message):
    __slots__ = ("instruction", "documents", "question")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    instruction: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    question: str
    def __init__(self, instruction: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., question: _Optional[str] = ...) -> None: ...

class ClassificationPrompt(_message.Message):
    __slots__ = ("instruction", "text", "labels")
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    instruction: str
    text: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instruction: _Optional[str] = ..., text: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "qa", "classification", "target", "levels", "thresholds", "max_expanded", "method", "budget", "seed", "value", "mode", "placeholder", "target_stderr", "max_new_tokens", "speculative", "baseline", "adaptive", "total_budget", "confidence", "kv_mode", "blend_recompute", "blend_checks", "blend_tolerance")
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MaxExpandedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QA_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXPANDED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    TARGET_STDERR_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BUDGET_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    KV_MODE_FIELD_NUMBER: _ClassVar[int]
    BLEND_RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    BLEND_CHECKS_FIELD_NUMBER: _ClassVar[int]
    BLEND_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    qa: QAPrompt
    classification: ClassificationPrompt
    target: str
    levels: _containers.RepeatedScalarFieldContainer[str]
    thresholds: _containers.ScalarMap[str, float]
    max_expanded: _containers.ScalarMap[str, int]
    method: str
    budget: int
    seed: int
    value: str
    mode: str
    placeholder: str
    target_stderr: float
    max_new_tokens: int
    speculative: bool
    baseline: str
    adaptive: bool
    total_budget: int
    confidence: float
    kv_mode: str
    blend_recompute: float
    blend_checks: int
    blend_tolerance: float
    def __init__(self, model: _Optional[str] = ..., qa: _Optional[_Union[QAPrompt, _Mapping]] = ..., classification: _Optional[_Union[ClassificationPrompt, _Mapping]] = ..., target: _Optional[str] = ..., levels: _Optional[_Iterable[str]] = ..., thresholds: _Optional[_Mapping[str, float]] = ..., max_expanded: _Optional[_Mapping[str, int]] = ..., method: _Optional[str] = ..., budget: _Optional[int] = ..., seed: _Optional[int] = ..., value: _Optional[str] = ..., mode: _Optional[str] = ..., placeholder: _Optional[str] = ..., target_stderr: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., speculative: _Optional[bool] = ..., baseline: _Optional[str] = ..., adaptive: _Optional[bool] = ..., total_budget: _Optional[int] = ..., confidence: _Optional[float] = ..., kv_mode: _Optional[str] = ..., blend_recompute: _Optional[float] = ..., blend_checks: _Optional[int] = ..., blend_tolerance: _Optional[float] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("id", "parent", "text", "start", "end", "value", "stderr", "expanded", "doc", "title", "token_start", "token_end", "values_by_answer", "values_by_token")
    class ValuesByAnswerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXPANDED_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_START_FIELD_NUMBER: _ClassVar[int]
    TOKEN_END_FIELD_NUMBER: _ClassVar[int]
    VALUES_BY_ANSWER_FIELD_NUMBER: _ClassVar[int]
    VALUES_BY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    parent: str
    text: str
    start: int
    end: int
    value: float
    stderr: float
    expanded: bool
    doc: int
    title: str
    token_start: int
    token_end: int
    values_by_answer: _containers.ScalarMap[str, float]
    values_by_token: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., parent: _Optional[str] = ..., text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., value: _Optional[float] = ..., stderr: _Optional[float] = ..., expanded: _Optional[bool] = ..., doc: _Optional[int] = ..., title: _Optional[str] = ..., token_start: _Optional[int] = ..., token_end: _Optional[int] = ..., values_by_answer: _Optional[_Mapping[str, float]] = ..., values_by_token: _Optional[_Iterable[float]] = ...) -> None: ...

class AnswerEvent(_message.Message):
    __slots__ = ("answer", "source", "label_probabilities")
    class LabelProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    answer: str
    source: str
    label_probabilities: _containers.ScalarMap[str, float]
    def __init__(self, answer: _Optional[str] = ..., source: _Optional[str] = ..., label_probabilities: _Optional[_Mapping[str, float]] = ...) -> None: ...

class LevelStartEvent(_message.Message):
    __slots__ = ("level", "features", "planned_evaluations")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PLANNED_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    level: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    planned_evaluations: int
    def __init__(self, level: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., planned_evaluations: _Optional[int] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("id", "value", "stderr")
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    id: str
    value: float
    stderr: float
    def __init__(self, id: _Optional[str] = ..., value: _Optional[float] = ..., stderr: _Optional[float] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("level", "evaluations", "planned_evaluations", "estimates")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    level: str
    evaluations: int
    planned_evaluations: int
    estimates: _containers.RepeatedCompositeFieldContainer[Estimate]
    def __init__(self, level: _Optional[str] = ..., evaluations: _Optional[int] = ..., planned_evaluations: _Optional[int] = ..., estimates: _Optional[_Iterable[_Union[Estimate, _Mapping]]] = ...) -> None: ...

class Level(_message.Message):
    __slots__ = ("level", "features", "evaluations", "threshold", "method", "wall_seconds", "expanded", "forward_tokens", "reused_tokens", "unsettled")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPANDED_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNSETTLED_FIELD_NUMBER: _ClassVar[int]
    level: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    evaluations: int
    threshold: float
    method: str
    wall_seconds: float
    expanded: _containers.RepeatedScalarFieldContainer[str]
    forward_tokens: int
    reused_tokens: int
    unsettled: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, level: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., evaluations: _Optional[int] = ..., threshold: _Optional[float] = ..., method: _Optional[str] = ..., wall_seconds: _Optional[float] = ..., expanded: _Optional[_Iterable[str]] = ..., forward_tokens: _Optional[int] = ..., reused_tokens: _Optional[int] = ..., unsettled: _Optional[_Iterable[str]] = ...) -> None: ...

class LevelEvent(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: Level
    def __init__(self, level: _Optional[_Union[Level, _Mapping]] = ...) -> None: ...

class AnswerShare(_message.Message):
    __slots__ = ("answer", "share")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    answer: str
    share: float
    def __init__(self, answer: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("evaluations", "coalitions", "forward_tokens", "forward_passes", "decode_steps", "wall_seconds", "reused_tokens", "stats")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    COALITIONS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    evaluations: int
    coalitions: int
    forward_tokens: int
    forward_passes: int
    decode_steps: int
    wall_seconds: float
    reused_tokens: int
    stats: _containers.ScalarMap[str, float]
    def __init__(self, evaluations: _Optional[int] = ..., coalitions: _Optional[int] = ..., forward_tokens: _Optional[int] = ..., forward_passes: _Optional[int] = ..., decode_steps: _Optional[int] = ..., wall_seconds: _Optional[float] = ..., reused_tokens: _Optional[int] = ..., stats: _Optional[_Mapping[str, float]] = ...) -> None: ...

class DoneEvent(_message.Message):
    __slots__ = ("answer", "value_function", "mode", "total_effect", "full_value", "empty_value", "label_probabilities", "answers", "summary", "request_id", "explanation_json", "answer_tokens", "self_check")
    class LabelProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EFFECT_FIELD_NUMBER: _ClassVar[int]
    FULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    EMPTY_VALUE_FIELD_NUMBER: _ClassVar[int]
    LABEL_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_JSON_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SELF_CHECK_FIELD_NUMBER: _ClassVar[int]
    answer: str
    value_function: str
    mode: str
    total_effect: float
    full_value: float
    empty_value: float
    label_probabilities: _containers.ScalarMap[str, float]
    answers: _containers.RepeatedCompositeFieldContainer[AnswerShare]
    summary: Summary
    request_id: str
    explanation_json: str
    answer_tokens: _containers.RepeatedScalarFieldContainer[str]
    self_check: SelfCheck
    def __init__(self, answer: _Optional[str] = ..., value_function: _Optional[str] = ..., mode: _Optional[str] = ..., total_effect: _Optional[float] = ..., full_value: _Optional[float] = ..., empty_value: _Optional[float] = ..., label_probabilities: _Optional[_Mapping[str, float]] = ..., answers: _Optional[_Iterable[_Union[AnswerShare, _Mapping]]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ..., request_id: _Optional[str] = ..., explanation_json: _Optional[str] = ..., answer_tokens: _Optional[_Iterable[str]] = ..., self_check: _Optional[_Union[SelfCheck, _Mapping]] = ...) -> None: ...

class SelfCheck(_message.Message):
    __slots__ = ("coalitions", "max_difference", "mean_difference", "tolerance", "recompute", "fallback", "reason")
    COALITIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    coalitions: int
    max_difference: float
    mean_difference: float
    tolerance: float
    recompute: float
    fallback: bool
    reason: str
    def __init__(self, coalitions: _Optional[int] = ..., max_difference: _Optional[float] = ..., mean_difference: _Optional[float] = ..., tolerance: _Optional[float] = ..., recompute: _Optional[float] = ..., fallback: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ExplainEvent(_message.Message):
    __slots__ = ("answer", "level_start", "progress", "level", "done")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    LEVEL_START_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    answer: AnswerEvent
    level_start: LevelStartEvent
    progress: ProgressEvent
    level: LevelEvent
    done: DoneEvent
    def __init__(self, answer: _Optional[_Union[AnswerEvent, _Mapping]] = ..., level_start: _Optional[_Union[LevelStartEvent, _Mapping]] = ..., progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., level: _Optional[_Union[LevelEvent, _Mapping]] = ..., done: _Optional[_Union[DoneEvent, _Mapping]] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("model", "prompt", "candidates", "budget", "seed", "method")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: QAPrompt
    candidates: _containers.RepeatedScalarFieldContainer[str]
    budget: int
    seed: int
    method: str
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[QAPrompt, _Mapping]] = ..., candidates: _Optional[_Iterable[str]] = ..., budget: _Optional[int] = ..., seed: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class RankedAnswer(_message.Message):
    __slots__ = ("answer", "total_effect", "full_value", "empty_value")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EFFECT_FIELD_NUMBER: _ClassVar[int]
    FULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    EMPTY_VALUE_FIELD_NUMBER: _ClassVar[int]
    answer: str
    total_effect: float
    full_value: float
    empty_value: float
    def __init__(self, answer: _Optional[str] = ..., total_effect: _Optional[float] = ..., full_value: _Optional[float] = ..., empty_value: _Optional[float] = ...) -> None: ...

class RankedDocument(_message.Message):
    __slots__ = ("index", "title", "value", "stderr")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    index: int
    title: str
    value: float
    stderr: float
    def __init__(self, index: _Optional[int] = ..., title: _Optional[str] = ..., value: _Optional[float] = ..., stderr: _Optional[float] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("answers", "documents", "summary")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[RankedAnswer]
    documents: _containers.RepeatedCompositeFieldContainer[RankedDocument]
    summary: Summary
    def __init__(self, answers: _Optional[_Iterable[_Union[RankedAnswer, _Mapping]]] = ..., documents: _Optional[_Iterable[_Union[RankedDocument, _Mapping]]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_documents", "max_characters", "max_budget", "max_candidates", "queue_size", "max_labels", "max_field_characters", "max_players")
    MAX_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    MAX_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    MAX_PLAYERS_FIELD_NUMBER: _ClassVar[int]
    max_documents: int
    max_characters: int
    max_budget: int
    max_candidates: int
    queue_size: int
    max_labels: int
    max_field_characters: int
    max_players: int
    def __init__(self, max_documents: _Optional[int] = ..., max_characters: _Optional[int] = ..., max_budget: _Optional[int] = ..., max_candidates: _Optional[int] = ..., queue_size: _Optional[int] = ..., max_labels: _Optional[int] = ..., max_field_characters: _Optional[int] = ..., max_players: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "is_default", "architecture")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    is_default: bool
    architecture: str
    def __init__(self, name: _Optional[str] = ..., is_default: _Optional[bool] = ..., architecture: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "limits")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: Limits
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...
