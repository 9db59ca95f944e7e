"""Errors a user can cause. Each carries a message that says what is wrong and what to do."""

from __future__ import annotations


class ScgraphError(Exception):
    """Base class: the message is meant to be shown to a user as is."""


class DataError(ScgraphError):
    """An input file or matrix cannot be used (unreadable, wrong format, invalid values)."""


class ConfigError(ScgraphError):
    """A parameter or combination of parameters is invalid."""


class GraphError(ScgraphError):
    """A cell graph cannot be built from the given data and settings."""


class MemoryGuardError(ScgraphError):
    """An operation would allocate more memory than the configured budget allows."""


class RunError(ScgraphError):
    """A run folder is missing, corrupt, or an operation on it is not allowed."""


class TrainingError(ScgraphError):
    """Training cannot continue (for example the loss became NaN or infinite)."""
