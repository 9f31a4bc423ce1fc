"""Value functions: what a coalition is worth. One file each, registered by name."""
from longshap.hierarchy.values import answers, label, logprob, probability  # noqa: F401  (registration)
from longshap.hierarchy.values.base import VALUE_FUNCTIONS, Target, ValueFunction, build_value_function

__all__ = ["VALUE_FUNCTIONS", "Target", "ValueFunction", "build_value_function"]
