"""Start a function named by module and attribute in a process of the fork server, so the
kernel side can start a worker without importing the worker side (``agents/warm.py``)."""

from __future__ import annotations

import importlib


def call(module: str, name: str, *args):
    return getattr(importlib.import_module(module), name)(*args)
