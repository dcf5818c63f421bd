"""Errors that a user can fix: the command line prints them as one line and exits non-zero."""


class UserError(RuntimeError):
    """A bad input (config value, missing data, ...) with a one-line message saying how to fix it."""
