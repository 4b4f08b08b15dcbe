"""Errors that speak to the user. The CLI prints them as one line, without a traceback."""

from __future__ import annotations


class RlhfkitError(Exception):
    """Something the user can fix: bad input, a missing file or package, a diverged run."""

    exit_code = 1
    """The CLI's exit status for this error."""


class UsageError(RlhfkitError):
    """A command line the options parser rejects (an unknown option, a bad value): exit status 2, as usual for
    usage errors."""

    exit_code = 2


class DataError(RlhfkitError):
    """A malformed record. Formats as `file:line: field 'name': what is wrong`."""

    def __init__(self, path: str, line: int | None, message: str, field: str | None = None):
        self.path, self.line, self.field = str(path), line, field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


class MissingPackageError(RlhfkitError):
    """An optional source package is not installed; says how to install it."""

    def __init__(self, package: str, purpose: str, no_deps: bool = True):
        flag = " --no-deps" if no_deps else ""
        super().__init__(f"{purpose} needs the '{package}' package: pip install{flag} {package}")


class TrainingDiverged(RlhfkitError):
    """A non-finite loss: the run stops and the last good checkpoint is kept."""
