"""Where a sweep lives, and what its agents need to reach it.

``resolve(sweep_id, project, entity)`` answers with a ``Target``: the embedded
server when ``local_sweep`` made the sweep (``local_server().has_sweep``; the
``ENTITY/PROJECT/ID`` forms are accepted), else the user's W&B server with the
user's login, checked without starting anything: a key from ``WANDB_API_KEY``,
``wandb.login()`` in this process or ``~/.netrc`` (wandb's order), then the sweep
looked up with ``wandb.Api().sweep``.  Failures are one-line ``SweepNotFound`` /
``LoginRequired`` errors.

A "W&B server" may also be another process's ``sweep-magic server`` (``WANDB_BASE_URL``
names it, as after ``wandb sweep`` against it).  It keeps sweeps, not runs, so its
agents run offline and report on its side channel, as with the embedded server; it is
asked first when ``WANDB_BASE_URL`` names it, so this process's own server is not
started for a sweep that lives elsewhere.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from sweep_magic.errors import LoginRequired, SweepMagicError, SweepNotFound, first_line
from sweep_magic.protocol.env import STALE

LOCAL_HEARTBEAT_SECONDS = 1.0  # the embedded server is in-process: heartbeats are free
CLOUD_HEARTBEAT_SECONDS = 5.0  # wandb's own default; don't hammer a shared W&B server
DEFAULT_CLOUD_URL = "https://api.wandb.ai"


@dataclass(frozen=True)
class Target:
    """Where the agents go: the sweep as wandb.agent takes it, plus the env that reaches it."""

    sweep_id: str  # bare id
    project: str | None
    entity: str | None
    env: dict = field(default_factory=dict)
    remove_env: tuple = STALE
    report_url: str | None = None
    heartbeat_seconds: float = CLOUD_HEARTBEAT_SECONDS
    metric_name: str | None = None
    metric_goal: str | None = None
    local: bool = False
    # The sweep config's `program` / `command`: what a program sweep (no function) runs per run.
    program: str | None = None
    command: tuple | None = None

    def worker_env(self, wandb_dir: str) -> tuple[dict, list]:
        """The environment every agent of this target gets (before its slot's own variables),
        and the names removed from the kernel's: the one place that decides both."""
        env = dict(self.env, WANDB_DIR=wandb_dir)
        if self.project:
            env["WANDB_PROJECT"] = self.project
        if self.entity:
            env["WANDB_ENTITY"] = self.entity
        # Entity/project the target does not set must not be inherited from the kernel either.
        remove = [*self.remove_env, *(k for k in ("WANDB_PROJECT", "WANDB_ENTITY") if k not in env)]
        return env, remove


def split(sweep_id: str) -> tuple[str | None, str | None, str]:
    parts = [p for p in sweep_id.split("/") if p]
    if not parts or len(parts) > 3:
        raise SweepNotFound(f"{sweep_id!r} is not a sweep id (expected ID, PROJECT/ID or ENTITY/PROJECT/ID)")
    parts = [None] * (3 - len(parts)) + parts
    return parts[0], parts[1], parts[2]


def resolve(sweep_id: str, project: str | None, entity: str | None) -> Target:
    path_entity, path_project, bare = split(sweep_id)
    entity = path_entity or entity
    project = path_project or project
    env_url = os.environ.get("WANDB_BASE_URL", "").rstrip("/")
    ours = bool(env_url) and is_sweep_magic_server(env_url)
    if ours:
        try:
            return _cloud_target(sweep_id, bare, project, entity, ours=True)
        except SweepMagicError:
            pass  # perhaps a local_sweep of this process; else the lookup below says what is wrong
    local = _local_target(sweep_id, bare, project, entity)
    if local is not None:
        return local
    return _cloud_target(sweep_id, bare, project, entity, ours=ours if env_url else None)


def _local_target(sweep_id: str, bare: str, project, entity) -> Target | None:
    from sweep_magic.server import local_server

    server = local_server()
    if not (server.has_sweep(bare) or (bare != sweep_id and server.has_sweep(sweep_id))):
        return None
    info = server.sweep_info(bare)
    name, goal = metric(info.get("config") or {})
    # The sweep's own entity/project keep offline runs filed where `wandb sync` would put
    # the sweep; the caller's words win.
    project, entity = project or info.get("project"), entity or info.get("entity")
    return Target(
        sweep_id=bare,
        project=project,
        entity=entity,
        env=server.env(),  # + protocol.env.LOCAL_DEFAULTS, added for every report_url target
        remove_env=STALE + ("WANDB_IDENTITY_TOKEN_FILE",),
        report_url=server.url,
        heartbeat_seconds=LOCAL_HEARTBEAT_SECONDS,
        metric_name=name,
        metric_goal=goal,
        local=True,
        **program_of(info.get("config") or {}),
    )


def program_of(config: dict) -> dict:
    """``program`` and ``command`` of a sweep config (``command`` a tuple of its tokens)."""
    program, command = config.get("program"), config.get("command")
    return {
        "program": str(program) if program is not None else None,
        "command": tuple(command) if isinstance(command, (list, tuple)) and command else None,
    }


def metric(config: dict) -> tuple[str | None, str | None]:
    metric = config.get("metric") or {}
    if not isinstance(metric, dict) or not metric.get("name"):
        return None, None
    return str(metric["name"]), ("maximize" if metric.get("goal") == "maximize" else "minimize")


def _cloud_target(sweep_id: str, bare: str, project, entity, ours: bool | None = None) -> Target:
    base_url, key, token_file, missed = _login()
    if not (key or token_file):
        hint = ""
        if missed:
            hint = " (this wandb's wandb.login() lookup could not be made: set WANDB_API_KEY)"
        raise LoginRequired(
            f"{sweep_id!r} is not a local sweep and there is no W&B login for {base_url}{hint}: "
            "run `wandb login` (or set WANDB_API_KEY), or make a local sweep with sweep_magic.local_sweep(config)"
        )
    project = project or os.environ.get("WANDB_PROJECT")
    entity = entity or os.environ.get("WANDB_ENTITY")
    if not project:
        raise SweepNotFound(
            f"{sweep_id!r} is not a local sweep; for a W&B sweep give ENTITY/PROJECT/ID (or a project)"
        )
    import wandb

    path = "/".join(p for p in (entity, project, bare) if p)
    try:
        api = wandb.Api(api_key=key, overrides={"base_url": base_url}) if key else wandb.Api()
        sweep = api.sweep(path)
        config = dict(sweep.config or {})
        entity, project = sweep.entity or entity, sweep.project or project
    except wandb.errors.AuthenticationError as err:
        raise LoginRequired(f"W&B at {base_url} refused the login: {first_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - CommError, ValueError, GraphQL errors: all mean "not there for you"
        raise SweepNotFound(f"sweep {path!r} not found on {base_url} ({first_line(err)})") from None
    name, goal = metric(config)
    env = {"WANDB_BASE_URL": base_url}
    if key:
        env["WANDB_API_KEY"] = key  # never logged: specs are 0600 files the worker deletes
    if ours is None:
        ours = base_url != DEFAULT_CLOUD_URL and is_sweep_magic_server(base_url)
    if ours:
        # It answers no run upserts: runs stay offline on disk (`wandb sync` later) and their
        # results reach the sweep on its side channel, exactly as with the embedded server.
        env["WANDB_MODE"] = "offline"
    return Target(
        sweep_id=bare,
        project=project,
        entity=entity,
        env=env,
        remove_env=STALE + (("WANDB_IDENTITY_TOKEN_FILE",) if key else ()),
        report_url=base_url if ours else None,
        heartbeat_seconds=LOCAL_HEARTBEAT_SECONDS if ours else CLOUD_HEARTBEAT_SECONDS,
        metric_name=name,
        metric_goal=goal,
        **program_of(config),
    )


def is_sweep_magic_server(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url`` is a ``sweep-magic server``: it meets a request without credentials with
    401 and ``WWW-Authenticate: Basic realm="sweep_magic"`` (server/httpd.py).  Sends no key:
    the answer must not depend on trusting the URL first."""
    request = urllib.request.Request(url.rstrip("/") + "/sweep_magic/v1/", method="GET")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        realm = err.headers.get("WWW-Authenticate") or ""
        err.close()
        return err.code == 401 and 'realm="sweep_magic"' in realm
    except (OSError, ValueError):  # unreachable, or not a URL: then it is not ours to use
        return False
    return False


def _login() -> tuple[str, str | None, str | None, tuple]:
    """(base URL, API key or None, identity token file or None, the saved-login lookups this
    wandb did not let us make), without touching the network."""
    from sweep_magic import _wandb

    base_url = os.environ.get("WANDB_BASE_URL", "").rstrip("/")
    token_file = os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or None
    key = os.environ.get("WANDB_API_KEY") or None
    if not base_url:
        base_url = _wandb.saved_base_url()[0] or DEFAULT_CLOUD_URL
    if key or token_file:
        return base_url, key, token_file, ()
    # wandb's own lookups, in wandb's order: `wandb.login()` in this process, then ~/.netrc.
    saved = _wandb.saved_api_key(base_url)
    return base_url, saved.api_key, None, saved.missed
