"""Errors that the command line reports as one line: :class:`DDMRError` with exit status
2, :class:`Interrupted` with the shell's status for the signal (128 + its number)."""


class DDMRError(Exception):
    """Bad input or configuration; the message names the file or option and the problem."""


class InputError(DDMRError):
    """A user file is missing, unreadable or unsuitable."""


class ConfigError(DDMRError):
    """An option, design or model configuration is invalid."""


class Interrupted(Exception):  # noqa: N818 (it is not an error: the user asked for it)
    """A run stopped on a signal (SIGINT, SIGTERM) after saving what it can resume from;
    the message says what was kept and how to continue."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = int(signal_number)

    @property
    def exit_status(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signal_number


class DivergenceError(DDMRError):
    """The training loss or the weights became NaN or infinite (learning rate too high,
    or bad data); training stops at once so that no checkpoint holds such weights."""


class WriteError(InputError):
    """An output could not be written (full disk, read-only folder, no permission):
    ``path`` is the output, ``reason`` what the system said."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: cannot write: {reason} (nothing was written; an existing "
                         "output is unchanged)")
        self.path = path
        self.reason = reason

    def naming(self, path: object) -> "WriteError":
        """The same failure reported for the output ``path`` that contains this one."""
        return WriteError(path, self.reason)
