"""How a process's end is named, on both sides of the boundary.

The supervisor names a worker's exit with it; with ``isolate="run"`` (and for program
sweeps) the worker names each run child's exit with it too, so a run killed by the
out-of-memory killer reads the same wherever it is shown.
"""

from __future__ import annotations

import signal

_HINTS = {
    "SIGKILL": "often the out-of-memory killer",
    "SIGSEGV": "a crash in native code",
    "SIGABRT": "aborted",
    "SIGBUS": "a crash in native code",
}


def signal_name(num: int) -> str | None:
    try:
        return signal.Signals(num).name
    except ValueError:
        return None


def describe_exit(code: int | None) -> str:
    """A short human reason for a process's exit status ("killed by SIGABRT", ...)."""
    if code is None:
        return "still running"
    if code == 0:
        return "exited"
    if code < 0:
        name = signal_name(-code) or f"signal {-code}"
        return f"killed by {name}"
    if code > 128 and signal_name(code - 128):
        # A shell or a runtime exiting "as if" killed: 137 is the classic OOM-killer report.
        name = signal_name(code - 128)
        hint = _HINTS.get(name)
        return f"exit code {code} ({name}{', ' + hint if hint else ''})"
    return f"exit code {code}"


def killed_by_signal(code: int | None) -> bool:
    """A signal death: a negative status, or the shell's 128+SIGKILL (137) for it."""
    return code is not None and (code < 0 or code == 128 + signal.SIGKILL)


def crash_reason(code: int) -> str:
    """Why a run's process died of a signal, with what it usually means:
    "killed by SIGKILL — often the out-of-memory killer"."""
    num = -code if code < 0 else code - 128
    name = signal_name(num) or f"signal {num}"
    hint = _HINTS.get(name)
    return f"killed by {name}" + (f" — {hint}" if hint else "")


def status_code(code: int) -> int:
    """A status as a shell reports it (a death by signal N is 128+N): what the side channel
    and ``RunFinished.exit_code`` carry."""
    return 128 - code if code < 0 else code
