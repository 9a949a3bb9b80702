"""The side channel: JSON POSTs to the embedded server's ``/sweep_magic/v1/...`` routes.

Workers say hello, report run starts, history and results on it (the wandb client's
own requests carry no results of an offline run); the kernel side reports a run lost
with its agent, so the sweep need not wait for missed heartbeats.  The server checks
the same ``api:<key>`` Basic auth as for the wandb client."""

from __future__ import annotations

import base64
import json
import urllib.request

from sweep_magic.protocol.events import jsonable

PREFIX = "/sweep_magic/v1/"


def post(url: str, api_key: str, path: str, body: dict, timeout: float = 5.0) -> None:
    """POST ``body`` to ``<url>/sweep_magic/v1/<path>``; raises on any failure."""
    auth = "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()
    req = urllib.request.Request(
        url.rstrip("/") + PREFIX + path,
        data=json.dumps(jsonable(body)).encode(),
        headers={"Content-Type": "application/json", "Authorization": auth},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()


def report_finish(url: str, api_key: str, run_id: str, *, state: str, exit_code: int,
                  summary: dict | None = None) -> None:
    post(url, api_key, f"runs/{run_id}/finish", {"exit_code": exit_code, "state": state, "summary": summary or {}})
