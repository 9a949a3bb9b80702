"""The HTTP face of the server over a real socket: auth, limits, routes, files, the CLI."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from server_helpers import REPO

from sweep_magic.server import LocalServer, local_server, local_sweep, serve

GRID = {"method": "grid", "parameters": {"x": {"values": [1, 2]}}}


@pytest.fixture
def server(tmp_path):
    srv = serve(db=str(tmp_path / "home" / "server.sqlite3"))
    yield srv
    srv.stop()


def _post(srv, path, payload, key=None, raw: bytes | None = None, headers=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(srv.url + path, data=body, method="POST")
    if key is not False:
        token = base64.b64encode(f"api:{key or srv.api_key}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _hb_query(agent_id):
    return {"query": "mutation Heartbeat($id: ID!, $runState: JSONString) { agentHeartbeat(input: "
                     "{id: $id, runState: $runState}) { agent { id } commands } }",
            "variables": {"id": agent_id, "runState": "{}"}}


def test_wrong_or_missing_key_is_401_and_changes_nothing(server):
    sid = server.create_sweep(GRID, project="p")
    agent = server.controller.create_agent(sid, "h")
    for key in (False, "local-" + "A" * 48, server.api_key[:-1]):
        status, body = _post(server, "/graphql", _hb_query(agent), key=key)
        assert status == 401 and body == {"error": "unauthorized"}
        assert _post(server, f"/sweep_magic/v1/agents/{agent}/hello", {"prefetch": True}, key=key)[0] == 401
    assert server.runs(sid) == [] and not server.controller.store.agent(agent)["prefetch"]
    status, body = _post(server, "/graphql", _hb_query(agent))
    assert status == 200 and json.loads(body["data"]["agentHeartbeat"]["commands"])[0]["type"] == "run"


def test_key_format_loopback_and_private_files(server, tmp_path):
    prefix, _, rest = server.api_key.partition("-")
    assert prefix == "local" and len(rest) >= 40 and rest.isalnum() and rest.isascii()
    assert server.url.startswith("http://127.0.0.1:") and server.host == "127.0.0.1"
    assert stat.S_IMODE(os.stat(server.db_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(server.db_path)).st_mode) == 0o700
    assert server.api_key not in repr(server) and server.url in repr(server)
    assert server.env() == {"WANDB_BASE_URL": server.url, "WANDB_API_KEY": server.api_key, "WANDB_MODE": "offline"}


def test_routes_limits_and_side_channel(server):
    sid = server.create_sweep(GRID, project="p")
    agent = server.controller.create_agent(sid, "h")
    assert _post(server, "/sdk/otel/v1/metrics", {})[0] == 404
    assert _post(server, "/sdk/otel/v1/logs", {})[0] == 404
    assert _post(server, "/elsewhere", {})[0] == 404
    assert _post(server, "/graphql", None, raw=b"x" * (8 * 1024 * 1024 + 1))[0] == 413
    assert _post(server, "/graphql", None, raw=b"{nope")[0] == 400
    assert _post(server, "/graphql", _hb_query("ghost"))[0] == 404  # agents drain and exit
    assert _post(server, "/sweep_magic/v1/agents/ghost/hello", {"prefetch": True})[0] == 404
    assert _post(server, f"/sweep_magic/v1/agents/{agent}/hello", None, raw=b"[1]")[0] == 400
    assert _post(server, f"/sweep_magic/v1/agents/{agent}/hello", {"prefetch": True, "pid": 5}) == (200, {"ok": True})
    _, body = _post(server, "/graphql", _hb_query(agent))
    run_id = json.loads(body["data"]["agentHeartbeat"]["commands"])[0]["run_id"]
    assert _post(server, f"/sweep_magic/v1/runs/{run_id}/start", {})[0] == 200
    rows = [{"_step": 0, "loss": 3.0}, {"_step": 1, "loss": 2.0}]
    assert _post(server, f"/sweep_magic/v1/runs/{run_id}/history", {"rows": rows})[0] == 200
    assert _post(server, f"/sweep_magic/v1/runs/{run_id}/history", {"rows": 5})[0] == 400
    assert _post(server, f"/sweep_magic/v1/runs/{run_id}/finish",
                 {"exit_code": 0, "state": "finished", "summary": {"loss": 2.0}})[0] == 200
    assert _post(server, "/sweep_magic/v1/runs/ghost/finish", {"exit_code": 0})[0] == 404
    run = server.runs(sid)[0]
    assert run["state"] == "finished" and run["summary"] == {"loss": 2.0}
    assert server.controller.store.history(run_id) == rows
    # still serving after all that
    assert _post(server, "/graphql", {"query": "query Viewer { viewer { id } }"})[0] == 200


def test_local_server_is_shared_and_stops_cleanly(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path / "smh"))
    srv = local_server()
    try:
        assert local_server() is srv and srv.db_path == str(tmp_path / "smh" / "server.sqlite3")
        sid = local_sweep(GRID, project="p")
        assert srv.has_sweep(sid) and srv.sweep_config(sid)["method"] == "grid"
        assert not srv.has_sweep("nope")
    finally:
        srv.stop()
    assert "stopped" in repr(srv)
    assert isinstance(srv, LocalServer)


def test_cli_prints_two_lines_and_exits_cleanly_on_sigterm(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "sweep_magic.server", "--db", str(tmp_path / "d" / "s.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert first.startswith("WANDB_BASE_URL=http://127.0.0.1:") and first.endswith("\n")
        key = second.strip().split("=", 1)[1]
        assert second.startswith("WANDB_API_KEY=local-") and len(key) >= 46
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert key not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_burst_of_concurrent_heartbeats(server):
    import threading

    sid = server.create_sweep({"method": "grid", "parameters": {"x": {"values": list(range(30))}}}, project="p")
    agents = [server.controller.create_agent(sid, "h") for _ in range(12)] + ["ghost1", "ghost2"]
    statuses, handed, lock = [], [], threading.Lock()

    def beat(agent):
        for _ in range(4):
            status, body = _post(server, "/graphql", _hb_query(agent))
            with lock:
                statuses.append(status)
            if status == 200:
                for cmd in json.loads(body["data"]["agentHeartbeat"]["commands"]):
                    if cmd["type"] == "run":
                        with lock:
                            handed.append(cmd["args"]["x"]["value"])
                        _post(server, f"/sweep_magic/v1/runs/{cmd['run_id']}/finish", {"exit_code": 0})

    threads = [threading.Thread(target=beat, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(statuses) == {200, 404} and statuses.count(404) == 8
    assert len(handed) == len(set(handed)) == 30  # every point once, none twice
    assert len(server.runs(sid)) == 30
    assert _post(server, "/graphql", {"query": "query Viewer { viewer { id } }"})[0] == 200
