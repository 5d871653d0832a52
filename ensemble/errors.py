"""Errors the CLI turns into one line and exit code 2 (bad input) or 1 (failure)."""


class EnsembleError(Exception):
    """A failure to report as one line, without a traceback (exit 1)."""

    exit_code = 1


class UsageError(EnsembleError):
    """Bad input: a spec key, an argument, a credential (exit 2)."""

    exit_code = 2


class SpecError(UsageError):
    """A spec key with a bad value; the message names the key path and what is valid."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")
