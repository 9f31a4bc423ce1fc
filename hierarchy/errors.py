"""Exceptions shared by the engine's modules and its callers."""


class RequestError(ValueError):
    """A request the engine refuses; `field` names the offending option (e.g. 'documents[2].text').

    A failure of the model is never a RequestError, so servers can tell the user's
    mistakes from their own.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Cancelled(Exception):
    """Raised inside the engine when the caller asked to stop (client gone, deadline passed)."""
