"""Errors that the command line reports as one line with exit status 2."""


class DDMRError(Exception):
    """Bad input or configuration; the message names the file or option and the problem."""


class InputError(DDMRError):
    """A user file is missing, unreadable or unsuitable."""


class ConfigError(DDMRError):
    """An option, design or model configuration is invalid."""
