"""Errors that a user can fix: the command line prints them as one line and exits non-zero."""

import os
import sys
from contextlib import contextmanager


class UserError(RuntimeError):
    """A bad input (missing data, a bad file, ...) with a one-line message saying how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value out of range or of the wrong kind; the message names the key."""


class NonFiniteError(UserError):
    """A loss term or gradient became NaN or infinite during training."""


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


def hydra_message(error: BaseException) -> str:
    """Hydra's report of a composition error as one line: its first line, the options it lists."""
    text = str(error)
    if "Available options" in text:
        head, tail = text.split("Available options", 1)
        options = []
        for line in tail.splitlines()[1:]:
            if not line.startswith("\t"):
                break
            options.append(line.strip())
        return f"{first_line(error)} (available: {', '.join(options)})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = " ".join(lines) if len(lines) <= 3 else lines[0]  # e.g. "Could not override 'x'. To append ... use +x=4"
    if not lines and error.__cause__ is not None:
        message = first_line(error.__cause__)
    return message


def run_hydra_app(app) -> None:
    """Run a ``@hydra.main`` app so that what Hydra would report over several lines (an unknown
    key or option, a bad override, a failing interpolation) is one ``error:`` line and exit 1."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its own report
    try:
        app()
    except (HydraException, OmegaConfBaseException, UserError) as error:
        user_error = find_user_error(error)
        print(f"error: {user_error if user_error else hydra_message(error)}", file=sys.stderr)
        raise SystemExit(1) from None
