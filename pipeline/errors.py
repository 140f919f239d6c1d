"""Errors caused by the user's input; each message is one line, printed as ``error: ...`` by the CLIs."""


class UserError(Exception):
    """Bad input that the user can fix; never a bug."""


class ConfigError(UserError, ValueError):
    """A config key or value that cannot be used."""


class DataError(UserError, RuntimeError):
    """Missing, empty or malformed data."""


class ModelError(UserError, RuntimeError):
    """A model that cannot be built (unknown name, weights unavailable or not fitting)."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
