"""The GraphQL core and the controller called directly (no socket, no processes).

Query texts come from the real wandb client: its request functions run with a transport that
hands each request to our core instead of wandb-core, so a field the client selects and the
schema lacks fails here, naming the field.
"""

from __future__ import annotations

import json
import threading

import pytest

from sweep_magic.server.config import BadInput, NotFound, point_key
from sweep_magic.server.controller import Controller
from sweep_magic.server.graphql_core import GraphQLCore, http_status
from sweep_magic.server.store import Store

GRID = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"x": {"values": [1, 2, 3]}, "y": {"values": ["a", "b"]}}}


class _CoreTransport:
    """wandb's ServiceApi surface (``execute_graphql``), answered by our core in-process."""

    def __init__(self, core: GraphQLCore):
        self.core = core
        self.queries: list[str] = []

    def execute_graphql(self, query, variables=None, timeout=None, **_):
        self.queries.append(query)
        result = self.core.execute({"query": query, "variables": variables or {}})
        if result.get("errors"):
            raise RuntimeError(result["errors"][0]["message"])
        return result["data"]


class _Api:
    def __init__(self, transport):
        self._service_api = transport
        self.settings = {"entity": None, "project": "proj"}


@pytest.fixture
def ctl(tmp_path):
    controller = Controller(Store(str(tmp_path / "db" / "s.sqlite3")), wandb_dirs=[str(tmp_path)])
    yield controller
    controller.store.close()


@pytest.fixture
def core(ctl):
    return GraphQLCore(ctl)


@pytest.fixture
def api(core, monkeypatch):
    # The client writes WANDB_PROJECT / WANDB_ENTITY into os.environ: let monkeypatch restore them.
    monkeypatch.setenv("WANDB_PROJECT", "x")
    monkeypatch.setenv("WANDB_ENTITY", "x")
    return _Api(_CoreTransport(core))


def _hb(ctl, agent, *listed):
    cmds = ctl.heartbeat(agent, json.dumps({r: True for r in listed}))
    assert len(cmds) <= 1
    return cmds[0] if cmds else None


def _finish(ctl, run_id, loss=0.0, code=0):
    ctl.run_started(run_id)
    ctl.run_finished(run_id, {"exit_code": code, "summary": {"loss": loss}})


# -- GraphQL through the client's own request functions -----------------------------------------
def test_client_sweep_paths_through_core(api, ctl, core):
    from wandb.apis.public import sweeps as client

    sweep, warnings = client._upsert_sweep(api, dict(GRID))
    assert warnings == [] and ctl.has_sweep(sweep["name"])
    assert sweep["project"] == {"id": "local/proj", "name": "proj", "entity": {"id": "local", "name": "local"}}
    assert len(api._service_api.queries) == 1  # the newest variant worked on the first try
    assert "templateVariableValues" in api._service_api.queries[0]
    sid = sweep["name"]
    agent = client._register_agent(api, "host", sweep_id=sid)
    commands = client._agent_heartbeat(api, agent["id"], {}, {})
    assert [c["type"] for c in commands] == ["run"] and commands[0]["args"]["x"] == {"value": 1}
    data = client._sweep_with_runs(api, sid, "{}")
    assert data["state"] == "RUNNING" and len(data["runs"]) == 1 and "method: grid" in data["config"]
    for state in ("PAUSED", "RUNNING", "CANCELED"):
        client._set_sweep_state(api, sid, state)
        assert client._get_sweep_state(api, sid) == state


def test_all_five_upsert_variants_succeed(core, ctl, monkeypatch):
    import wandb
    from wandb.apis.public import sweeps as client

    seen = []

    class Failing(_CoreTransport):
        def execute_graphql(self, query, variables=None, **_):
            seen.append((query, variables))
            raise RuntimeError("make the client try its next variant")

    monkeypatch.setenv("WANDB_PROJECT", "x")
    with pytest.raises(wandb.errors.CommError, match="try its next variant"):
        client._upsert_sweep(_Api(Failing(core)), dict(GRID))
    assert len(seen) == 5
    for query, variables in seen:
        result = core.execute({"query": query, "variables": variables})
        assert "errors" not in result, result
        assert ctl.has_sweep(result["data"]["upsertSweep"]["sweep"]["name"])


def test_viewer_default_entity_and_features(core):
    viewer = core.execute({"query": "query Viewer { viewer { id entity username email flags "
                                    "teams { edges { node { name } } } } }"})
    assert viewer["data"]["viewer"]["id"] and viewer["data"]["viewer"]["teams"] == {"edges": []}
    assert core.execute({"query": "query GetDefaultEntity { viewer { id entity } }"})["data"]["viewer"]["entity"]
    feats = core.execute({"query": "query ServerFeaturesQuery { serverInfo { features { name isEnabled } } }"})
    assert feats["data"] == {"serverInfo": {"features": []}}


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "UTF-8"),
    (b"[1, 2]", "'query'"),
    (json.dumps({"query": "query { viewer { id "}).encode(), "Syntax Error"),
    (json.dumps({"query": "query Nope { nope { id } }"}).encode(), "nope"),
    (json.dumps({"query": "query V { viewer { id shoeSize } }"}).encode(), "shoeSize"),
    (json.dumps({"query": "query V { viewer { id } }", "variables": [1]}).encode(), "variables"),
])
def test_malformed_requests_get_clear_400s(core, body, fragment):
    result = core.execute(body)
    assert http_status(result) == 400 and fragment in result["errors"][0]["message"]


def test_unknown_agent_heartbeat_is_404_and_unknown_sweep_is_refused(core):
    hb = core.execute({"query": "mutation Heartbeat($id: ID!, $runState: JSONString) { agentHeartbeat("
                                "input: {id: $id, runState: $runState}) { agent { id } commands } }",
                       "variables": {"id": "nobody", "runState": "{}"}})
    assert http_status(hb) == 404 and "nobody" in hb["errors"][0]["message"]
    agent = core.execute({"query": "mutation CreateAgent($sweep: String!) { createAgent(input: {host: \"h\", "
                                   "sweep: $sweep}) { agent { id } } }", "variables": {"sweep": "nosuch"}})
    assert "nosuch" in agent["errors"][0]["message"] and agent["data"]["createAgent"] is None


def _upsert(core, config_text):
    return core.execute({"query": "mutation UpsertSweep($config: String) { upsertSweep(input: {config: $config}) "
                                  "{ sweep { name } configValidationWarnings } }",
                         "variables": {"config": config_text}})


@pytest.mark.parametrize("config, reason", [
    ("method: bayes\nparameters: {x: {min: 0.0, max: 1.0}}\n", "metric"),
    ("method: sideways\nparameters: {x: {values: [1]}}\n", "sideways"),
    ("method: random\nrun_cap: 0\nparameters: {x: {values: [1]}}\n", "run_cap"),
    ("method: random\nrun_cap: -3\nparameters: {x: {values: [1]}}\n", "run_cap"),
    ("method: grid\nparameters: {x: {values: [1]}}\nmetric: {name: l}\n"
     "early_terminate: {type: hyperband, max_iter: 9}\n", "hyperband"),
    (": : :", "YAML"),
    ("[1, 2]", "mapping"),
])
def test_invalid_configs_are_refused_with_the_reason(core, ctl, config, reason):
    result = _upsert(core, config)
    assert result["errors"] and reason in result["errors"][0]["message"]
    assert ctl.store.sweep_ids() == []


def test_warnings_are_a_list_and_run_cap_is_not_one(core):
    ok = _upsert(core, "method: random\nrun_cap: 2\nretry_failed: 1\nparameters: {x: {values: [1, 2]}}\n")
    assert ok["data"]["upsertSweep"]["configValidationWarnings"] == []
    odd = _upsert(core, "method: grid\nparameters: {x: {values: [1]}}\nfrobnicate: 3\n")
    warnings = odd["data"]["upsertSweep"]["configValidationWarnings"]
    assert isinstance(warnings, list) and any("frobnicate" in w for w in warnings)


# -- controller decisions ------------------------------------------------------------------------
def test_grid_each_point_once_then_exit_and_finished(ctl):
    sid, _ = ctl.create_sweep(dict(GRID))
    agents = [ctl.create_agent(sid, "h") for _ in range(3)]
    points = []
    for _ in range(3):
        for a in agents:
            cmd = _hb(ctl, a)
            if cmd and cmd["type"] == "run":
                points.append(point_key(cmd["args"]))
                _finish(ctl, cmd["run_id"])
    assert len(points) == 6 and len(set(points)) == 6
    assert [(_hb(ctl, a) or {}).get("type") for a in agents] == ["exit"] * 3
    assert ctl.sweep(sid)["state"] == "FINISHED"


def test_exit_waits_for_runs_in_flight(ctl):
    sid, _ = ctl.create_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
    a, b = ctl.create_agent(sid, "h"), ctl.create_agent(sid, "h")
    ra, rb = _hb(ctl, a)["run_id"], _hb(ctl, b)["run_id"]
    _finish(ctl, ra)
    assert _hb(ctl, a) is None  # b's run may still fail and need a taker
    assert _hb(ctl, b, rb) is None
    _finish(ctl, rb)
    assert _hb(ctl, a)["type"] == "exit" and ctl.sweep(sid)["state"] == "FINISHED"


def test_run_cap_is_enforced_by_the_server(ctl):
    sid, _ = ctl.create_sweep({"method": "random", "run_cap": 2, "parameters": {"x": {"min": 0.0, "max": 1.0}}})
    a = ctl.create_agent(sid, "h")
    for _ in range(2):
        _finish(ctl, _hb(ctl, a)["run_id"])
    assert _hb(ctl, a)["type"] == "exit" and len(ctl.visible_runs(sid)) == 2


def test_paused_holds_canceled_stops(ctl):
    sid, _ = ctl.create_sweep(dict(GRID))
    a, b = ctl.create_agent(sid, "h"), ctl.create_agent(sid, "h")
    run = _hb(ctl, a)["run_id"]
    ctl.set_sweep_state(sid, "PAUSED")
    assert _hb(ctl, b) is None and _hb(ctl, a, run) is None
    ctl.set_sweep_state(sid, "CANCELED")
    assert _hb(ctl, a, run) == {"type": "stop", "run_id": run}
    assert _hb(ctl, b)["type"] == "exit"
    with pytest.raises(BadInput):
        ctl.set_sweep_state(sid, "SIDEWAYS")


def test_prefetch_only_for_agents_that_said_hello(ctl):
    sid, _ = ctl.create_sweep(dict(GRID))
    plain, worker = ctl.create_agent(sid, "h"), ctl.create_agent(sid, "h")
    ctl.hello(worker, {"prefetch": True, "pid": 1})
    r1 = _hb(ctl, plain)["run_id"]
    assert _hb(ctl, plain, r1) is None
    w1 = _hb(ctl, worker)["run_id"]
    w2 = _hb(ctl, worker, w1)["run_id"]
    assert _hb(ctl, worker, w1, w2) is None
    with pytest.raises(NotFound):
        ctl.hello("ghost", {"prefetch": True})


def test_dropped_prefetched_run_is_handed_out_again(ctl):
    sid, _ = ctl.create_sweep(dict(GRID))
    worker = ctl.create_agent(sid, "h")
    ctl.hello(worker, {"prefetch": True})
    r1 = _hb(ctl, worker)["run_id"]
    ctl.run_started(r1)
    r2 = _hb(ctl, worker, r1)
    _hb(ctl, worker, r1, r2["run_id"])  # queued: listed, never started
    ctl.run_finished(r1, {"exit_code": 0, "summary": {}})
    # The agent reached its count: it drops r2 and stops heartbeating.
    assert ctl.reap(now=ctl.store.agent(worker)["last_seen"] + 1000) == [worker]
    ctl.finalize(r2["run_id"])
    assert ctl.store.run(r2["run_id"])["state"] == "reclaimed"
    other = ctl.create_agent(sid, "h")
    assert _hb(ctl, other)["args"] == r2["args"]
    with pytest.raises(NotFound):
        ctl.heartbeat(worker, "{}")  # a gone agent is told to drain and exit


def test_never_listed_run_without_file_is_reclaimed_and_seen_one_crashed(ctl):
    sid, _ = ctl.create_sweep(dict(GRID))
    a = ctl.create_agent(sid, "h")
    first = _hb(ctl, a)
    second = _hb(ctl, a)  # first left runState unseen: settled in the background
    assert second["args"] != first["args"]
    ctl.finalize(first["run_id"])  # no side-channel start, no run file: never ran
    assert ctl.store.run(first["run_id"])["state"] == "reclaimed"
    assert _hb(ctl, a, second["run_id"]) is None
    ctl.run_finished(second["run_id"], {"exit_code": 0})
    again = _hb(ctl, a)
    assert again["args"] == first["args"]
    _hb(ctl, a, again["run_id"])  # seen running by a plain agent …
    ctl.reap(now=ctl.store.agent(a)["last_seen"] + 1000)  # … whose agent vanished
    ctl.finalize(again["run_id"])
    assert ctl.store.run(again["run_id"])["state"] == "crashed"


def test_retry_failed_requeues_failed_grid_points(ctl):
    sid, _ = ctl.create_sweep({"method": "grid", "retry_failed": 1, "parameters": {"x": {"values": [1]}}})
    a = ctl.create_agent(sid, "h")
    first = _hb(ctl, a)
    _finish(ctl, first["run_id"], code=1)
    second = _hb(ctl, a)
    assert second["args"] == first["args"]
    _finish(ctl, second["run_id"], code=1)
    assert _hb(ctl, a)["type"] == "exit"  # retried once, as asked


def test_hyperband_stop_is_resent_while_listed(ctl):
    sid, _ = ctl.create_sweep({"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
                               "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
                               "parameters": {"x": {"values": [1, 2, 3]}}})
    a, b, c = (ctl.create_agent(sid, "h") for _ in range(3))
    ra, rb, rc = (_hb(ctl, x)["run_id"] for x in (a, b, c))
    for run, loss in ((ra, 1.0), (rb, 1.0)):
        ctl.run_history(run, [{"_step": i, "loss": loss} for i in range(4)])
        ctl.run_finished(run, {"exit_code": 0, "summary": {"loss": loss}})
    ctl.run_history(rc, [{"_step": i, "loss": 50.0} for i in range(4)])
    assert _hb(ctl, c, rc) == {"type": "stop", "run_id": rc}
    assert _hb(ctl, c, rc) == {"type": "stop", "run_id": rc}
    ctl.run_finished(rc, {"exit_code": 1, "summary": {}})
    assert ctl.store.run(rc)["state"] == "killed"


def test_bayes_sees_results(ctl):
    sid, _ = ctl.create_sweep({"method": "bayes", "metric": {"name": "loss", "goal": "minimize"},
                               "parameters": {"x": {"min": 0.0, "max": 1.0}}})
    a = ctl.create_agent(sid, "h")
    for _ in range(3):
        cmd = _hb(ctl, a)
        _finish(ctl, cmd["run_id"], loss=cmd["args"]["x"]["value"] ** 2)
    runs = ctl._engine_runs(ctl.sweep(sid), with_history=True)
    assert [r.summary_metrics["loss"] for r in runs] == [r["summary"]["loss"] for r in ctl.visible_runs(sid)]
    assert _hb(ctl, a)["type"] == "run"


def test_side_channel_bad_input(ctl):
    sid, _ = ctl.create_sweep(dict(GRID))
    run = _hb(ctl, ctl.create_agent(sid, "h"))["run_id"]
    with pytest.raises(NotFound):
        ctl.run_started("nosuchrun")
    with pytest.raises(BadInput):
        ctl.run_history(run, "rows")
    with pytest.raises(BadInput):
        ctl.run_finished(run, {"exit_code": "zero"})
    with pytest.raises(BadInput):
        ctl.run_finished(run, {"exit_code": 0, "state": "exploded"})
    with pytest.raises(BadInput):
        ctl.heartbeat(ctl.create_agent(sid, "h"), "{not json")


def test_concurrent_heartbeats_hand_out_each_point_once(ctl):
    sid, _ = ctl.create_sweep({"method": "grid", "parameters": {"x": {"values": list(range(40))}}})
    agents = [ctl.create_agent(sid, "h") for _ in range(16)]
    handed, errors = [], []

    def agent_loop(agent):
        try:
            for _ in range(6):
                cmd = _hb(ctl, agent)
                if cmd and cmd["type"] == "run":
                    handed.append(cmd["args"]["x"]["value"])
                    _finish(ctl, cmd["run_id"])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=agent_loop, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(handed) == list(range(40))


def test_restart_on_same_db_resumes_without_repeats(tmp_path):
    db = str(tmp_path / "s.sqlite3")
    ctl = Controller(Store(db))
    sid, _ = ctl.create_sweep(dict(GRID))
    agent = ctl.create_agent(sid, "h")
    seen = []
    for _ in range(3):
        cmd = _hb(ctl, agent)
        seen.append(point_key(cmd["args"]))
        _finish(ctl, cmd["run_id"])
    ctl.store.close()
    ctl = Controller(Store(db))
    ctl.start()
    try:
        while (cmd := _hb(ctl, agent))["type"] == "run":
            seen.append(point_key(cmd["args"]))
            _finish(ctl, cmd["run_id"])
        assert len(seen) == 6 and len(set(seen)) == 6
    finally:
        ctl.close()
        ctl.store.close()
