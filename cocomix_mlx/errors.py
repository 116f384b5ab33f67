"""Typed errors. The CLI turns each into one line on stderr and exit status 2."""


class CocomixError(Exception):
    """A problem the user can fix; the message says what to do next."""


class ConfigError(CocomixError):
    """Unknown preset, unknown or ill-typed config key, inconsistent settings."""


class DataError(CocomixError):
    """Unreadable, empty, binary or mismatched input data."""


class CheckpointError(CocomixError):
    """Missing, incomplete or corrupt checkpoint."""


class TrainingDiverged(CocomixError):
    """The loss became NaN or infinite."""


class UnknownConcept(ConfigError):
    """A concept name or index that the model or its dictionary does not have."""


class ContextOverflow(ConfigError):
    """A prompt or text longer than the model's context."""
