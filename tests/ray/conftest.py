"""The Ray layer: ``tests/ray/cluster/`` runs a real multi-node Ray cluster, which must live
in a private network namespace (loopback only).  Outside one, those files are not collected:
``test_ray.py`` runs them in a fresh pytest under ``unshare -n`` and fails when they fail."""

from __future__ import annotations

import pathlib

from ray_helpers import only_loopback

CLUSTER = pathlib.Path(__file__).parent / "cluster"


def pytest_ignore_collect(collection_path, config):
    if pathlib.Path(collection_path) == CLUSTER and not only_loopback():
        return True
    return None
