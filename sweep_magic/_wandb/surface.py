"""Every private wandb name sweep_magic relies on, and ``check()``, which verifies them all.

Each touch point has a class that says what its absence costs (docs/wandb-compat.md):

    required     the agent cannot be run correctly without it: the worker stops before any
                 run with one line naming the wandb version and what is missing
    live         the live view of runs (Run method wrappers): when one is missing, none
                 are installed and the worker falls back to public ``wandb.init``/``Run.log``
                 wrappers, saying so once ("live detail off")
    best-effort  a named degradation with correct results (slower exits, polling, ...)

The check needs no network and starts no wandb-core: class attributes by ``hasattr``,
method signatures by ``inspect.signature``, the attributes pyagent makes per agent by running
``Agent._init`` on a bare instance, module paths by importing them.  A wandb newer than
tested goes through the same check: full, degraded, or refused, never silently wrong.
"""

from __future__ import annotations

import importlib
import inspect
import queue
import re
from dataclasses import dataclass

REQUIRED, LIVE, BEST_EFFORT = "required", "live", "best-effort"
TESTED = ((0, 25), (0, 31))  # minors measured end to end (docs/wandb-compat.md)

PYAGENT = "wandb.agents.pyagent"
WANDB_RUN = "wandb.sdk.wandb_run"
SERVICE = "wandb.sdk.lib.service.service_process"
SETUP = "wandb.sdk.wandb_setup"
AUTH = "wandb.sdk.lib.wbauth.authenticate"
NETRC = "wandb.sdk.lib.wbauth.wbnetrc"


@dataclass(frozen=True)
class Point:
    id: str
    cls: str  # REQUIRED | LIVE | BEST_EFFORT
    module: str
    path: str  # attribute path inside ``module`` ("" for the module itself)
    form: str  # attr | method | call | const | instance | job | statuses | sleep | argv | fields
    # method: the leading parameters a wrapper relies on (pyagent/wandb call them by position);
    # call: the keyword arguments sweep_magic calls it with; const: the value it must have
    params: tuple = ()
    degradation: str = ""  # what the user gets without it (best-effort and live points)
    # False where the fallback is as good for the user: said in the worker's log, not in
    # the views (a note on every session that changes nothing visible is noise).
    shown: bool = True

    @property
    def where(self) -> str:
        return f"{self.module}.{self.path}" if self.path else self.module


_AGENT_GONE = "no runs can be reported"
POINTS: tuple[Point, ...] = (
    Point("agent.module", REQUIRED, PYAGENT, "Agent", "attr"),
    Point("agent.init", REQUIRED, PYAGENT, "Agent._init", "method", ("self",)),
    Point("agent.run_job", REQUIRED, PYAGENT, "Agent._run_job", "method", ("self", "job")),
    Point("agent.job", REQUIRED, PYAGENT, "Job", "job"),
    Point("agent.run_status", REQUIRED, PYAGENT, "Agent._run_status", "instance"),
    Point("agent.statuses", REQUIRED, PYAGENT, "RunStatus", "statuses"),
    Point("agent.exit_flag", REQUIRED, PYAGENT, "Agent._exit_flag", "instance"),
    Point("agent.register", BEST_EFFORT, PYAGENT, "Agent._register", "method", ("self",),
          "no agent id: the embedded server gets no hello, so no prefetch (up to one heartbeat between runs) "
          "and a dead agent is noticed after wandb's timeout, not a few beats"),
    Point("agent.exit", BEST_EFFORT, PYAGENT, "Agent._exit", "method", ("self",),
          "an exit command waits out pyagent's idle sleep (up to 10 s)"),
    Point("agent.queue", BEST_EFFORT, PYAGENT, "Agent._queue", "instance",
          degradation="an exit waits for pyagent's queue poll (up to 5 s)"),
    Point("agent.heartbeat_commands", BEST_EFFORT, PYAGENT, "Agent._heartbeat_commands", "method",
          ("self", "run_status"),
          "a run handed out while draining goes back to the sweep when the agent's exit is noticed "
          "(a few heartbeats), not at once", shown=False),
    Point("agent.heartbeat_seconds", BEST_EFFORT, PYAGENT, "Agent.HEARTBEAT_SLEEP_SECONDS", "attr",
          degradation="heartbeats to the embedded server are paced by capping pyagent's sleeps instead",
          shown=False),
    Point("agent.flapping", BEST_EFFORT, PYAGENT, "Agent.FLAPPING_MAX_FAILURES", "attr",
          degradation="pyagent's own flapping check stays on: an agent may stop after 3 failed runs in its "
          "first minute"),
    Point("agent.time", BEST_EFFORT, PYAGENT, "time", "sleep",
          degradation="pyagent's 5 s idle sleeps are not cut short: gaps between runs and exits take seconds more"),
    Point("run.class", LIVE, WANDB_RUN, "Run", "attr"),
    Point("run.on_start", LIVE, WANDB_RUN, "Run._on_start", "method", ("self",)),
    Point("run.history", LIVE, WANDB_RUN, "Run._partial_history_callback", "method",
          ("self", "data", "step", "commit")),
    Point("run.finish", LIVE, WANDB_RUN, "Run._finish", "method", ("self", "exit_code")),
    Point("core.launcher", BEST_EFFORT, SERVICE, "_launch_server", "attr",
          degradation="wandb-core processes are found by polling (priority is lowered up to 0.2 s late)"),
    Point("core.argv", BEST_EFFORT, SERVICE, "", "argv",
          degradation="wandb-core processes cannot be found: not reniced, not reaped (they exit on their own)"),
    Point("login.setup", BEST_EFFORT, SETUP, "singleton", "call",
          degradation="a base URL or key set by wandb.login()/wandb.setup() in the kernel is not seen"),
    Point("login.session", BEST_EFFORT, AUTH, "session_credentials", "call", ("host",),
          degradation="a key from wandb.login() in the kernel is not seen (WANDB_API_KEY and ~/.netrc still are)"),
    Point("login.netrc", BEST_EFFORT, NETRC, "read_netrc_auth", "call", ("host",),
          degradation="~/.netrc is read with Python's netrc module instead of wandb's reader", shown=False),
    Point("env.service", BEST_EFFORT, "wandb.env", "SERVICE", "const", ("WANDB_SERVICE",),
          "the kernel's wandb-core address may reach the workers under a new name: they could share "
          "the kernel's wandb-core and stop with it"),
    Point("quiet.settings", BEST_EFFORT, "wandb", "Settings", "fields",
          degradation="WANDB__DISABLE_STATS/MACHINE_INFO/SAVE_REQUIREMENTS may be ignored: workers cost more CPU"),
)
BY_ID = {p.id: p for p in POINTS}

# wandb's modules worth importing before a fork (the zygote forks agents, the fork server
# forks run children): best effort by nature -- one that moved is imported by the child
# itself, slower but correct.  "wandb.sdk.launch" is imported by every wandb.init.
AGENT_MODULES = ("wandb", PYAGENT, WANDB_RUN)
RUN_MODULES = ("wandb", "wandb.sdk.wandb_init", WANDB_RUN, "wandb.sdk.launch", "wandb.sdk.launch.inputs.internal",
               "wandb.apis.public")  # fmt: skip

# Read off live objects, so not checkable in advance; each read has a fallback in place:
# an agent without ``_agent_id`` after ``_register`` sends no hello (as agent.register
# missing), a launcher result without ``_process.pid`` leaves wandb-core to the poller.
RUNTIME_NAMES = ("_agent_id", "_process")


def private_names() -> set[str]:
    """Every private wandb attribute name the adapter touches (for the leak test)."""
    names = set(RUNTIME_NAMES)
    for point in POINTS:
        names |= {n for n in point.path.split(".") if n.startswith("_") or n.isupper()}
    return names
GROUPS = ("agent", "run", "core", "login", "env", "quiet")


def version() -> str:
    import wandb

    return str(getattr(wandb, "__version__", "unknown"))


def minor(text: str) -> tuple[int, int] | None:
    found = re.match(r"(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2])) if found else None


def resolve(point: Point):
    """The object a point names (AttributeError/ImportError when it is not there)."""
    obj = importlib.import_module(point.module)
    for name in filter(None, point.path.split(".")):
        obj = getattr(obj, name)
    return obj


def _fits(fn, params: tuple) -> str | None:
    """None when ``fn`` takes ``params`` first (by name) and every other parameter has a default."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "has no signature"
    given = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    names = tuple(p.name for p in given[: len(params)])
    if names != params:
        return f"takes ({', '.join(p.name for p in given)}), expected ({', '.join(params)}, ...)"
    extra = [p.name for p in given[len(params):] if p.default is p.empty]
    return f"has new required parameters ({', '.join(extra)})" if extra else None


def _takes_keywords(fn, params: tuple) -> str | None:
    """None when ``fn(**{name: ...})`` for ``params`` is a valid call."""
    try:
        inspect.signature(fn).bind(**{name: None for name in params})
    except (TypeError, ValueError) as err:
        return f"cannot be called with {', '.join(params) or 'no arguments'} ({err})"
    return None


def _bare_agent():
    """An Agent as ``_init`` leaves it, without ``__init__`` (which builds an API client)."""
    agent_cls = resolve(BY_ID["agent.module"])
    agent = agent_cls.__new__(agent_cls)
    agent._init()
    return agent


_INSTANCE_TYPES = {"_run_status": dict, "_exit_flag": bool, "_queue": queue.Queue}


def _probe(point: Point, bare) -> str | None:
    """What is wrong with ``point`` on this wandb, or None."""
    if point.form == "instance":
        if isinstance(bare, str):
            return f"Agent._init() failed: {bare}"
        name = point.path.rsplit(".", 1)[-1]
        if name not in vars(bare):
            return "is not set by Agent._init()"
        want = _INSTANCE_TYPES[name]
        value = vars(bare)[name]
        return None if isinstance(value, want) else f"is a {type(value).__name__}, not a {want.__name__}"
    if point.form == "argv":
        source = inspect.getsource(importlib.import_module(point.module))
        return None if '"--pid"' in source else "no longer starts wandb-core with --pid <owner>"
    obj = resolve(point)
    if point.form in ("method", "call") and not callable(obj):
        return "is not callable"
    if point.form == "method":
        return _fits(obj, point.params)
    if point.form == "call":
        return _takes_keywords(obj, point.params)
    if point.form == "job":
        job = obj({"type": "run", "run_id": "r", "args": {"x": {"value": 1}}})
        shape = (getattr(job, "type", None), getattr(job, "run_id", None), getattr(job, "config", None))
        return None if shape == ("run", "r", {"x": {"value": 1}}) else f"Job(command) gives {shape!r}"
    if point.form == "statuses":
        names = ("QUEUED", "RUNNING", "STOPPED", "ERRORED")
        missing = [n for n in names if getattr(obj, n, None) != n]
        return f"lacks {', '.join(missing)}" if missing else None
    if point.form == "const":
        return None if (obj,) == point.params else f"is {obj!r}, not {point.params[0]!r}"
    if point.form == "sleep":  # a module global pyagent sleeps through: the time module, or ours
        return None if callable(getattr(obj, "sleep", None)) else "has no sleep()"
    if point.form == "fields":
        fields = getattr(obj, "model_fields", None) or {}
        want = ("x_disable_stats", "x_disable_machine_info", "x_save_requirements")
        missing = [n for n in want if n not in fields]
        return f"lacks {', '.join(missing)}" if missing else None
    return None  # "attr": resolving it was the check


@dataclass(frozen=True)
class Surface:
    """The result of ``check()``: which touch points fit this wandb."""

    version: str
    problems: dict  # point id → what is wrong (only points that do not fit)
    checked: tuple  # ids of the points that were checked

    def ok(self, point_id: str) -> bool:
        return point_id in self.checked and point_id not in self.problems

    def _bad(self, cls: str) -> list[Point]:
        return [BY_ID[i] for i in self.checked if i in self.problems and BY_ID[i].cls == cls]

    @property
    def refused(self) -> bool:
        return bool(self._bad(REQUIRED))

    @property
    def live(self) -> bool:
        return not self._bad(LIVE)

    @property
    def tested(self) -> bool:
        found = minor(self.version)
        return found is not None and TESTED[0] <= found <= TESTED[1]

    def refusal(self) -> str:
        """One line: the wandb version and what it lacks."""
        what = "; ".join(f"{p.where} {self.problems[p.id]}" for p in self._bad(REQUIRED))
        return (f"wandb {self.version} cannot run sweep_magic agents: {what} "
                f"(sweep_magic is tested with wandb {_range()}; see docs/wandb-compat.md)")  # fmt: skip

    def live_note(self) -> str | None:
        """One line when the live view is off, else None."""
        bad = self._bad(LIVE)
        if not bad:
            return None
        what = "; ".join(f"{p.where} {self.problems[p.id]}" for p in bad)
        return (f"live detail off on wandb {self.version} ({what}): runs show start, end, state and "
                "the last values logged through run.log/wandb.log")  # fmt: skip

    def degradations(self, shown: bool | None = None) -> list[str]:
        """One line per best-effort point that does not fit (only the ``shown`` ones, or
        only the others, when given)."""
        return [f"wandb {self.version}: {p.degradation} ({p.where} {self.problems[p.id]})"
                for p in self._bad(BEST_EFFORT) if shown is None or p.shown == shown]  # fmt: skip

    def notes(self) -> list[str]:
        """What the views should say once: live detail off, the degradations a user would
        notice, an untested version.  The rest (``degradations(shown=False)``) is for the log."""
        lines = [n for n in [self.live_note()] if n] + self.degradations(shown=True)
        if not self.tested and not self.refused:
            lines.append(f"wandb {self.version} is outside the tested range {_range()}; "
                         "its surface check passed for what is listed here")  # fmt: skip
        return lines


def _range() -> str:
    (a, b), (c, d) = TESTED
    return f"{a}.{b}-{c}.{d}"


def check(groups: tuple = GROUPS) -> Surface:
    """Verify every touch point of ``groups`` (see GROUPS) on the installed wandb."""
    points = [p for p in POINTS if p.id.split(".")[0] in groups]
    bare = None
    if any(p.form == "instance" for p in points):
        try:
            bare = _bare_agent()
        except Exception as err:  # noqa: BLE001 - any failure of a probe is reported as its reason
            bare = f"{type(err).__name__}: {err}"
    problems = {}
    for point in points:
        try:
            problem = _probe(point, bare)
        except (ImportError, AttributeError) as err:
            problem = "is missing" if isinstance(err, AttributeError) else f"cannot be imported ({err})"
        except Exception as err:  # noqa: BLE001 - a probe that breaks is a point that does not fit
            problem = f"could not be checked ({type(err).__name__}: {err})"
        if problem:
            problems[point.id] = problem
    return Surface(version=version(), problems=problems, checked=tuple(p.id for p in points))
