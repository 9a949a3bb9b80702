"""Sweep configs: parse the client's YAML, split off the keys the server enforces itself
(``run_cap``, ``retry_failed``), and validate with the ``sweeps`` engine's own first decision.

Also the errors the server answers with (``ControllerError`` and its kinds), shared by the
controller, the GraphQL core and the HTTP layer.
"""

from __future__ import annotations

import json

import yaml

from sweep_magic.errors import SweepMagicError

SWEEP_STATES = ("RUNNING", "PAUSED", "CANCELED", "FINISHED")
# Keys W&B's backend handles itself and the engine's schema does not know.
SERVER_KEYS = ("run_cap", "retry_failed")


def sweeps_engine():
    """The engine, imported on first use; sweeps 0.2 sets a pydantic-v1 config key that v2 warns about."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Valid config keys have changed")
        warnings.filterwarnings("ignore", message="Support for class-based `config`")
        import sweeps
    return sweeps


class ControllerError(SweepMagicError):
    """A request the server refuses; ``str()`` is shown to the client."""


class NotFound(ControllerError):
    pass


class BadInput(ControllerError):
    pass


def jsonable(value):
    """numpy scalars from the engine → plain Python (np.float64 is a float, np.int64 is not)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def point_key(config: dict) -> str:
    """Canonical text of a run's parameter values: the identity of a grid point."""
    return json.dumps({k: v.get("value") if isinstance(v, dict) else v for k, v in config.items()}, sort_keys=True)


def split_config(config) -> tuple[dict, int | None, int]:
    """(engine config, run_cap, retry_failed); raises BadInput on a config the engine refuses."""
    if not isinstance(config, dict):
        raise BadInput("sweep config must be a mapping")
    engine = {k: v for k, v in config.items() if k not in SERVER_KEYS}
    run_cap = config.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap <= 0):
        raise BadInput(f"run_cap must be a positive integer, got {run_cap!r}")
    retry = config.get("retry_failed", 0) or 0
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise BadInput(f"retry_failed must be a non-negative integer, got {retry!r}")
    return engine, run_cap, retry


def validate_config(config) -> list[str]:
    """Warnings (schema violations) for a config the engine can run; BadInput otherwise."""
    sweeps = sweeps_engine()
    engine, _, _ = split_config(config)
    warnings = list(sweeps.schema_violations_from_proposed_config(engine))
    try:
        # The engine's own first decision is the test that matters: it names what is wrong.
        sweeps.next_run(engine, [])
        if engine.get("early_terminate"):
            sweeps.stop_runs(engine, [])
    except Exception as err:  # noqa: BLE001 - the engine raises ValueError, KeyError, TypeError, jsonschema errors
        # jsonschema appends the whole schema after a blank line: the first line is the reason.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        extra = f" (schema: {'; '.join(w.splitlines()[0] for w in warnings)})" if warnings else ""
        raise BadInput(f"invalid sweep config: {reason}{extra}") from None
    return warnings


def parse_config_text(text: str | None) -> dict:
    """The client sends the config as YAML (JSON is valid YAML too)."""
    if not text:
        raise BadInput("a new sweep needs a config")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise BadInput(f"sweep config is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise BadInput("sweep config must be a mapping")
    return config
