"""User-facing errors: each carries one line that says what is wrong and what to do.

The magic turns every ``SweepMagicError`` into an IPython ``UsageError`` (one line,
no traceback); the Python API raises them as they are.
"""


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
