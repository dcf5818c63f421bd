"""Errors that a user can fix: the command line prints them as one line and exits non-zero."""

import sys
from contextlib import contextmanager


class UserError(RuntimeError):
    """A bad input (missing data, a bad file, ...) with a one-line message saying how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value out of range or of the wrong kind; the message names the key."""


class NonFiniteError(UserError):
    """A loss term or gradient became NaN or infinite during training."""


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
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(1) from None


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its class name when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
