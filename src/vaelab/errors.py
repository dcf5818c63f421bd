"""Errors that a user can fix, every one of them: library code raises them; the entry points
print them as one ``error:`` line (``exit_with_error``) and exit 1."""

import sys
from contextlib import contextmanager
from typing import NoReturn


class UserError(RuntimeError):
    """A bad input (missing data, a bad file, ...) with a one-line message saying how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value out of range or of the wrong kind; the message names the key."""


class NonFiniteError(UserError):
    """A loss term or gradient became NaN or infinite during training."""


class DataNotFoundError(UserError):
    """The IDX files are missing and could not be downloaded."""


class DataCorruptError(UserError):
    """An IDX file is truncated, has the wrong magic number, or disagrees with its partner file."""


class CheckpointError(UserError):
    """A missing, unreadable, unsafe or foreign checkpoint."""


class FolderInUseError(UserError):
    """Another process holds the folder's lock: the folder is its, and is left alone."""


class NotAFileError(UserError):
    """A symlink, folder, FIFO or device where vaelab writes or reads a file."""


class JobCannotStart(UserError):
    """SLURM keeps a job pending for a reason that no wait changes (see NEVER_STARTS)."""


class TrialPruned(Exception):
    """Optuna's pruner stopped this trial after a validation epoch: an outcome, not a failure.
    ``metrics``: the last logged values (nats per image)."""

    def __init__(self, message: str, metrics: dict[str, float]) -> None:
        super().__init__(message)
        self.metrics = metrics


def find_user_error(error: BaseException | None) -> UserError | None:
    """The UserError behind an exception (hydra.utils.instantiate wraps them), or None."""
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    return error


@contextmanager
def one_line_errors():
    """For command-line entry points: a UserError becomes `error: <message>` on stderr and exit 1;
    anything else propagates with its traceback."""
    try:
        yield
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        exit_with_error(user_error)


def require(ok: bool, key: str, value, allowed: str) -> None:
    """Raise ConfigError ``<key>=<value> is not allowed: <allowed>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def exit_with_error(message: object) -> NoReturn:
    """The one way a command stops on a bad input: ``error: <message>`` on stderr, exit status 1."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1) from None


def printable(text: str) -> str:
    """``text`` without control characters (a crafted name cannot move the terminal's cursor)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its class name when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
