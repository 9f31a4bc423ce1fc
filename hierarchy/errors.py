"""Exceptions shared by the engine's modules and its callers."""


class Cancelled(Exception):
    """Raised inside the engine when the caller asked to stop (client gone, deadline passed)."""
