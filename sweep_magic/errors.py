"""User-facing errors: each carries one line that says what is wrong and what to do.

The magic turns every ``SweepMagicError`` into an IPython ``UsageError`` (one line,
no traceback); the Python API raises them as they are.
"""


def first_line(err: BaseException, *, with_type: bool = False, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    line = lines[0][:limit]
    return f"{type(err).__name__}: {line}" if with_type else line


def last_line(text: str | None, limit: int = 300) -> str:
    """The last non-empty line of a traceback or log text ("" for none): what went wrong."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


class SweepMagicError(Exception):
    """A mistake the user can fix; ``str(err)`` is the whole message."""


class PlacementError(SweepMagicError):
    """Bad ``gpus=`` / ``cpus=`` / ``agents_per_gpu=``, or devices that are not there."""


class FunctionError(SweepMagicError):
    """The function cannot be sent to a worker (arguments, pickling, size)."""


class SweepNotFound(SweepMagicError):
    """The sweep id is known neither to the embedded server nor to W&B."""


class LoginRequired(SweepMagicError):
    """A W&B cloud sweep, and no W&B login in this environment."""


class SweepFailed(SweepMagicError):
    """No run of the sweep finished and at least one failed or crashed (``raise_for_failures``)."""
