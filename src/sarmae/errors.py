"""User-facing errors: one line that names the file or value and says what to do."""


class SarmaeError(Exception):
    """Base class; the CLI prints ``error: <message>`` and exits 2 instead of a traceback."""


class DataError(SarmaeError):
    """A dataset, annotation file or image cannot be used as it is."""


class ConfigError(SarmaeError):
    """A config file or a ``key=value`` override is wrong."""


class CheckpointError(SarmaeError):
    """A checkpoint is missing, unreadable or of another architecture."""
