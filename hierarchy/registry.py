"""Named registries, so a new estimator or value function is one file that registers itself."""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """name → class; `lookup` turns an unknown name into an error listing the known ones."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        """Class decorator: file the class under `name` and give it that `name` attribute."""

        def wrap(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]  # every registered class is named by its key
            self[name] = cls
            return cls

        return wrap

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self)}") from None
