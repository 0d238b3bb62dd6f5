"""User-facing errors: one line that names the file or value and says what to do."""


class SarmaeError(Exception):
    """Base class; the CLI prints ``error: <message>`` and exits 2 instead of a traceback."""


class DataError(SarmaeError):
    """A dataset, annotation file or image cannot be used as it is."""


class ConfigError(SarmaeError):
    """A config file or a ``key=value`` override is wrong."""


class CheckpointError(SarmaeError):
    """A checkpoint is missing, unreadable or of another architecture."""


class DiskFullError(SarmaeError):
    """The file system ran out of space while a file was written (the previous version of the file is intact)."""


class Stopped(BaseException):  # noqa: N818 (a stop, not an error)
    """A command stopped by a signal (SIGTERM from a scheduler, SIGINT from Ctrl-C): the CLI exits 128 + signum.
    (Lightning would turn a KeyboardInterrupt into exit 1.)

    ``message`` says what was kept (e.g. the checkpoint a training run wrote) and how to continue.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(signum, message)
        self.signum, self.message = int(signum), message


def raise_stopped(signum: int, frame: object) -> None:  # noqa: ARG001
    """Signal handler: turn SIGTERM into :class:`Stopped`, unwinding (and cleaning up) like Ctrl-C does."""
    raise Stopped(signum)
