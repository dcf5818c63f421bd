"""Errors that a user can fix: the command line prints them as one line and exits non-zero."""


class UserError(RuntimeError):
    """A bad input (missing data, a bad file, ...) with a one-line message saying how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value out of range or of the wrong kind; the message names the key."""


class NonFiniteError(UserError):
    """A loss term or gradient became NaN or infinite during training."""
