"""A sweep config named by the user: a dict variable of the notebook, or a YAML file.

One rule for the magic's ``--config`` and the panel's sweep field."""

from __future__ import annotations

import os

from sweep_magic.errors import SweepMagicError


def config_from(ref: str, namespace: dict) -> dict | None:
    """The config ``ref`` names (a variable holding a dict, or a YAML file), or None when it
    names neither.  Raises ``SweepMagicError`` (one line) for a variable that is not a dict,
    or a file that is not a YAML mapping."""
    ref = ref.strip()
    if ref.isidentifier() and ref in namespace:
        value = namespace[ref]
        if not isinstance(value, dict):
            raise SweepMagicError(f"{ref}: expected a dict (a sweep config), got {type(value).__name__}")
        return value
    path = os.path.expanduser(ref)
    if not os.path.isfile(path):
        if ref.endswith((".yaml", ".yml")):
            raise SweepMagicError(f"{ref}: no such variable in the notebook, nor YAML file")
        return None
    import yaml

    try:
        with open(path) as fh:
            value = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as err:
        raise SweepMagicError(f"{ref}: cannot read it ({str(err).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise SweepMagicError(f"{ref}: the YAML is not a mapping (a sweep config)")
    return value
