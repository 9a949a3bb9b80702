"""The control panel without a browser: widgets built from real snapshot dataclasses.

A ``FakeSession`` produces ``SessionSnapshot``s and records the API calls the
panel makes; GPUs come from an injected inventory (4 GPUs, one used by another
user).  Widget traits are read back directly, and ``panel.stats`` counts every
comm message the panel's widgets send (the same counter a live notebook uses).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import time
import types

import pytest

import sweep_magic

pytest.importorskip("ipywidgets")

from panel_fakes import FakeSession, four_gpus, real_shell  # noqa: E402

from sweep_magic.errors import SweepMagicError  # noqa: E402
from sweep_magic.faces import panel as panel_mod  # noqa: E402
from sweep_magic.faces.panel import SessionPanel, panel_for, widgets_available  # noqa: E402
from sweep_magic.faces.panel_form import PROGRAM, user_functions  # noqa: E402
from sweep_magic.snapshot import RunSnapshot, SessionSnapshot  # noqa: E402


def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def make_panel():
    panels = []

    def make(session=None, **kwargs):
        kwargs.setdefault("inventory", four_gpus)
        kwargs.setdefault("shell", real_shell())
        kwargs.setdefault("interval", 0.05)
        kwargs.setdefault("launch", sweep_magic.launch)
        kwargs.setdefault("local_sweep", sweep_magic.local_sweep)
        p = SessionPanel(session, **kwargs)
        panels.append(p)
        return p

    yield make
    for p in panels:
        p.close()
        assert p.stats.errors == 0, p.stats.last_error


def test_gpu_checkboxes_start_ticked_unless_busy(make_panel):
    p = make_panel(form=True)
    boxes = p.form.gpu_boxes
    assert [b.description for b in boxes] == ["GPU 0", "GPU 1", "GPU 2", "GPU 3"]
    assert [b.value for b in boxes] == [True, True, False, True]  # GPU 2: bob's process
    label = p.form.gpu_labels[2].value
    assert "bob" in label and "pid 4242" in label and "(busy)" in label and "30.0 GiB" in label
    assert "H200" in p.form.gpu_labels[0].value and "12% util" in p.form.gpu_labels[0].value
    wait_for(lambda: not p.start_button.disabled, what="Start enabled")
    assert p.stop_button.disabled


def test_gpu_figures_refresh_while_open(make_panel):
    calls = {"n": 0}

    def inventory():
        calls["n"] += 1
        gpus = four_gpus()
        return [dataclasses.replace(g, utilization_pct=float(calls["n"])) for g in gpus]

    p = make_panel(form=True, inventory=inventory, gpu_poll=0.1)
    wait_for(lambda: calls["n"] >= 3, what="inventory polled again")
    wait_for(lambda: f"{calls['n'] - 1}% util" in p.form.gpu_labels[0].value or f"{calls['n']}% util" in p.form.gpu_labels[0].value)


def test_function_dropdown_lists_only_user_callables():
    def train():
        pass

    class Model:
        pass

    ns = {"train": train, "evaluate": functools.partial(train), "Model": Model, "os": os, "json": json,
          "print": print, "get_ipython": lambda: None, "exit": lambda: None, "_private": train, "x": 3,
          "hidden_fn": train}
    assert user_functions(ns, hidden={"hidden_fn": train}) == ["evaluate", "train"]


def test_start_passes_placement_to_launch(make_panel):
    launched = []

    def launch(**kwargs):
        launched.append(kwargs)
        return FakeSession(agents=kwargs["agents_per_gpu"] * len(kwargs["gpus"]))

    shell = real_shell()
    p = make_panel(form=True, launch=launch, shell=shell)
    assert p.form.function.options == ("train", PROGRAM)
    p.form.sweep.value = "abc123"
    p.form.count.value = 5
    p.form.agents_per_gpu.value = 2
    p.form.gpu_boxes[0].value = False
    wait_for(lambda: not p.start_button.disabled)
    p.start_button.click()
    assert p.error.value == "" and len(launched) == 1
    assert launched[0] == {"function": shell.user_ns["train"], "sweep_id": "abc123", "count": 5,
                           "gpus": [1, 3], "agents_per_gpu": 2}
    # While it runs: Start off, Stop on, one row per agent.
    wait_for(lambda: p.start_button.disabled and not p.stop_button.disabled, what="running buttons")
    wait_for(lambda: len(p.agents_box.children) == 1 + 4, what="agent rows")
    # A second Start while running is refused with a message, not a second launch.
    p.start_button.click()
    wait_for(lambda: "already running" in p.error.value, what="refusal shown")
    assert len(launched) == 1
    assert p.form.fresh_process.value is False  # today's behaviour unless asked


def _start_with(make_panel, **form_values) -> dict:
    """Fill sweep "abc123" and ``form_values`` into a form panel, press Start, and return what
    it passed to launch (a recording launch: this is the form's reading, not a sweep)."""
    launched = []
    p = make_panel(form=True, launch=lambda **kw: launched.append(kw) or FakeSession(agents=3), shell=real_shell())
    p.form.sweep.value = "abc123"
    for name, value in form_values.items():
        getattr(p.form, name).value = value
    wait_for(lambda: not p.start_button.disabled)
    p.start_button.click()
    assert p.error.value == "" and len(launched) == 1, p.error.value
    return launched[0]


def test_fresh_process_checkbox_asks_for_isolate_run(make_panel):
    assert _start_with(make_panel, fresh_process=True)["isolate"] == "run"


def test_config_variable_becomes_a_local_sweep(make_panel):
    made = []
    shell = real_shell()
    shell.user_ns["cfg"] = {"method": "grid", "parameters": {"lr": {"values": [1, 2]}}}
    p = make_panel(form=True, shell=shell, launch=lambda **kw: FakeSession(sweep_id=kw["sweep_id"]),
                   local_sweep=lambda config, **kw: made.append((config, kw)) or "local-sweep-1")
    p.form.sweep.value = "cfg"
    p.form.project.value = "proj"
    session = p.start()
    assert made == [(shell.user_ns["cfg"], {"project": "proj"})]
    assert session.sweep_id == "local-sweep-1"


def test_cpu_mode_without_gpus(make_panel):
    launched = []
    p = make_panel(form=True, inventory=lambda: [], launch=lambda **kw: launched.append(kw) or FakeSession())
    assert p.form.cpu_mode
    p.form.sweep.value = "s1"
    p.form.cpu_agents.value = 3
    p.start()
    assert "gpus" not in launched[0] and launched[0]["cpus"] == 3
    n = p.form.n_cores
    wait_for(lambda: (f"{n // 3} of {n} cores each" if n >= 3 else "share") in p.form.cores_each.value)


def test_failures_are_shown_not_swallowed(make_panel):
    def launch(**kwargs):
        raise SweepMagicError("Sweep nope not found on the embedded server.")

    p = make_panel(form=True, launch=launch)
    p.form.sweep.value = "nope"
    p.start_button.click()
    wait_for(lambda: "nope not found" in p.error.value, what="error shown")
    wait_for(lambda: not p.start_button.disabled, what="Start back on")
    p.form.function.options = []  # no function defined yet
    p.start_button.click()
    wait_for(lambda: "Pick the function" in p.error.value)


def test_stop_all_stops_the_session(make_panel):
    p = make_panel(form=True, launch=lambda **kw: FakeSession(agents=2))
    p.form.sweep.value = "s"
    session = p.start()
    wait_for(lambda: not p.stop_button.disabled)
    p.stop_button.click()
    wait_for(lambda: session.stopped, what="session.stop() called")
    wait_for(lambda: p.stop_button.disabled and not p.start_button.disabled, what="buttons after stop")
    wait_for(lambda: "stopped" in p.header.value, what="header says stopped")


def test_agent_rows_buttons_and_log(make_panel):
    session = FakeSession(agents=2)
    session.start_run(0, name="<b>bold-run</b>", config={"lr": 0.1}, metrics={"loss": 0.5}, step=7)
    session.update_agent(0, log_tail=("epoch 1", "<script>x</script>"))
    p = make_panel(session)
    assert p.form is None
    wait_for(lambda: len(p.agents_box.children) == 3)
    row = p._rows[0]
    wait_for(lambda: "bold-run" in row.html.value)
    assert "&lt;b&gt;bold-run" in row.html.value and "lr=0.1" in row.html.value and "loss=0.5" in row.html.value
    assert str(session.snapshot().agents[0].pid) in row.html.value and ">7<" in row.html.value
    assert p.start_button.disabled and not p.stop_button.disabled
    row.drain.click()
    p._rows[1].kill.click()
    p._rows[1].restart.click()
    assert session.calls == [("drain_agent", 0), ("kill_agent", 1), ("restart_agent", 1)]
    assert row.log.value == ""
    row.log_toggle.value = True
    wait_for(lambda: "epoch 1" in row.log.value)
    assert "&lt;script&gt;" in row.log.value
    session.update_agent(1, state="exited")
    wait_for(lambda: p._rows[1].kill.disabled and p._rows[1].drain.disabled)


def test_results_ranked_best_marked_failures_kept(make_panel):
    session = FakeSession(agents=1, metric_goal="minimize")
    for name, loss, state in [("a", 0.5, "finished"), ("b", 0.2, "finished"), ("c", None, "failed"), ("d", 0.9, "finished")]:
        run = session.start_run(0, name=name, config={"x": name})
        session.finish_run(run, state=state, summary={} if loss is None else {"loss": loss},
                           error="Traceback\nValueError: boom" if state == "failed" else None)
    p = make_panel(session)
    wait_for(lambda: "★" in p.results.value)
    html = p.results.value
    assert html.index(">b<") < html.index(">a<") < html.index(">d<") < html.index(">c<")
    assert "ValueError: boom" in html and "color:#cb2431" in html
    wait_for(lambda: "<polyline" in p.chart.value, what="chart drawn")
    assert p.chart.value.count("<circle") == 3


def test_showing_a_session_twice_is_one_live_panel(make_panel):
    session = FakeSession(agents=1)
    first = panel_for(session, inventory=four_gpus, shell=real_shell())
    try:
        assert panel_for(session) is first
        bundle = first._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert "sweep1" in bundle["text/plain"]  # the text face, where widgets cannot render
    finally:
        first.close()
    assert panel_for(session, inventory=four_gpus, shell=real_shell()) is not first
    panel_mod._PANELS.pop(session.id).close()


def test_widgets_unavailable_without_a_kernel():
    assert widgets_available(types.SimpleNamespace()) is False
    assert widgets_available(types.SimpleNamespace(kernel=object())) is True


def test_rate_limit_under_a_flood(make_panel):
    """8 agents changing as fast as a thread can: the panel sends ≤ 10 messages in any second."""
    session = FakeSession(agents=8)
    runs = [session.start_run(i, name=f"run-{i}", config={"lr": i}) for i in range(8)]
    p = make_panel(session, interval=0.02)
    wait_for(lambda: len(p.agents_box.children) == 9)
    for row in p._rows:
        row.log_toggle.value = True  # the heaviest case: every log tail shown
    time.sleep(1.2)
    start_count, started = p.stats.messages_sent, time.monotonic()
    stop = threading.Event()
    changes = {"n": 0}

    def flood():
        step = 0
        while not stop.is_set():
            step += 1
            i = step % 8
            session.log_metrics(runs[i], step=step, metrics={"loss": 1.0 / step})
            session.update_agent(i, log_tail=(f"line {step}",))
            changes["n"] += 2

    thread = threading.Thread(target=flood)
    thread.start()
    time.sleep(3.0)
    stop.set()
    thread.join()
    window = time.monotonic() - started
    sent = p.stats.messages_sent - start_count
    assert changes["n"] > 1000  # really a flood
    assert sent > 5, "the panel stopped updating under load"
    assert sent <= 10 * window + 10
    assert p.stats.max_in_window(1.0, since=started) <= 10
    # Coalesced, not lost: the last values arrive once the flood stops.
    last = session.snapshot()
    wait_for(lambda: all("line" in row.log.value for row in p._rows))
    wait_for(lambda: f">{last.runs[7].step}<" in p._rows[7].html.value, timeout=10, what="final step shown")


def test_start_and_stop_a_real_session(make_panel, tmp_path, monkeypatch):
    """Start and Stop all through the real API: a local sweep, one CPU agent, then stopped."""
    monkeypatch.setenv("SWEEP_MAGIC_HOME", str(tmp_path))
    pytest.importorskip("wandb")

    def train():
        import time

        import wandb

        with wandb.init() as run:
            for step in range(100):
                run.log({"loss": 1.0 / (step + 1)})
                time.sleep(0.2)

    shell = real_shell()
    shell.user_ns.update(train=train, cfg={"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
                                           "parameters": {"lr": {"values": [1, 2, 3]}}})
    p = make_panel(form=True, inventory=lambda: [], shell=shell, interval=0.1)
    p.form.sweep.value = "cfg"
    p.form.cpu_agents.value = 1
    p.start_button.click()
    assert p.error.value == "" and p._error is None, p._error
    session = p.session
    try:
        wait_for(lambda: any(r.state == "running" for r in session.snapshot().runs), timeout=90, what="a run")
        wait_for(lambda: "loss=" in p._rows[0].html.value, timeout=30, what="live metrics in the row")
        p.stop_button.click()
        wait_for(lambda: session.done, timeout=60, what="session stopped")
        # One refresher pass sends the header and both buttons one widget after another (and the
        # rate budget may hold some for the next pass): wait for all three, not the first two.
        wait_for(lambda: "stopped" in p.header.value and not p.start_button.disabled and p.stop_button.disabled,
                 what="panel shows stopped: Start on, Stop all off")
        assert all(r.state != "running" for r in session.snapshot().runs)
    finally:
        session.stop()


def test_chart_and_table_stay_small_for_long_sweeps():
    from sweep_magic.faces.panel_html import chart_svg, results_html

    runs = tuple(RunSnapshot(run_id=f"r{i}", agent=0, name=f"<run {i}>", config={"i": i}, state="finished",
                             summary={"loss": 1.0 / (i + 1)}) for i in range(1000))
    snap = SessionSnapshot(session_id="s", sweep_id="w", state="finished", runs=runs, metric_name="loss",
                           metric_goal="minimize", version=3)
    svg = chart_svg(snap)
    assert svg.count("<circle") == 400 and len(svg) < 100_000
    table = results_html(snap)
    assert table.count("<tr") == 31 and "+970 more" in table
    assert "&lt;run 999&gt;" in table and "<run " not in table


def test_yaml_path_becomes_a_local_sweep(make_panel, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("method: random\nmetric: {name: acc, goal: maximize}\nparameters:\n  lr: {min: 0.1, max: 1.0}\n")
    made = []
    p = make_panel(form=True, inventory=lambda: [], launch=lambda **kw: FakeSession(sweep_id=kw["sweep_id"]),
                   local_sweep=lambda config, **kw: made.append(config) or "from-yaml")
    p.form.sweep.value = str(path)
    assert p.start().sweep_id == "from-yaml"
    assert made == [{"method": "random", "metric": {"name": "acc", "goal": "maximize"},
                     "parameters": {"lr": {"min": 0.1, "max": 1.0}}}]
    p.form.sweep.value = str(tmp_path / "missing.yaml")
    p.session.stop()
    p.start_button.click()
    wait_for(lambda: "nor YAML file" in p.error.value)


def test_a_program_sweep_from_the_panel(make_panel):
    """Picking "(the sweep's program)" launches with no function: each run executes the
    sweep's program:, as `wandb agent` would."""
    launched = _start_with(make_panel, function=PROGRAM)
    assert launched["function"] is None and launched["sweep_id"] == "abc123"


def test_agent_rows_name_the_ray_node():
    from sweep_magic.faces.panel_html import agent_row_html
    from sweep_magic.snapshot import AgentSnapshot

    here = AgentSnapshot(index=0, device="gpu 0", state="idle", pid=11, current_run=None, runs_done=0, restarts=0,
                         exit_code=None, reason=None, log_path="", log_tail=())
    there = dataclasses.replace(here, node="10.0.0.7")
    assert "@" not in agent_row_html(here, None)
    assert "gpu 0 @ 10.0.0.7" in agent_row_html(there, None)


# --- the Ray view: a cluster's nodes, a checkbox per GPU --------------------------------------

def _node(node_id, gpus, free, alive=True, head=False, address="10.0.0.1"):
    from sweep_magic.cluster import ClusterNode

    return ClusterNode(node_id=node_id, address=address, hostname=f"host-{node_id[:2]}", gpus=gpus, gpus_free=free,
                       cpus=8.0, alive=alive, head=head, label=f"{address}/{node_id[:6]}")


class Cluster:
    """What ``sweep_magic.ray_nodes`` returns, changeable by the test (nodes die, join)."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def __call__(self):
        return list(self.nodes)


def test_the_ray_view_shows_each_node_with_a_checkbox_per_gpu_and_starts_on_ray(make_panel):
    cluster = Cluster([_node("aaaa00", 0, 0, head=True), _node("bbbb11", 2, 1), _node("cccc22", 4, None)])
    launched = []
    p = make_panel(form=True, cluster=cluster, ray_address="10.0.0.1:6379",
                   launch=lambda **kw: launched.append(kw) or FakeSession(agents=4))
    rows = p.form.node_rows
    assert [len(r.boxes) for r in rows] == [0, 2, 4]
    # Free GPUs start ticked; where Ray's free figure is unknown, all of the node's.
    assert [[b.value for b in r.boxes] for r in rows] == [[], [True, False], [True] * 4]
    assert "Ray cluster: 3 live nodes, 6 GPUs" in p.form.cluster_note.value
    assert "node 10.0.0.1/bbbb11" in rows[1].label.value and "2 GPUs, 1 free" in rows[1].label.value
    assert "head" in rows[0].label.value and "no GPU" in rows[0].label.value
    assert p.form.nodes_box.children == tuple(r.box for r in rows)
    rows[2].boxes[3].value = False
    p.form.sweep.value = "abc123"
    p.form.agents_per_gpu.value = 2
    p.start()
    kwargs = launched[0]
    assert kwargs["backend"] == "ray" and kwargs["ray_address"] == "10.0.0.1:6379"
    assert kwargs["gpus"] == {"bbbb11": 1, "cccc22": 3} and kwargs["agents_per_gpu"] == 2


def test_the_ray_view_follows_nodes_that_die_and_join(make_panel):
    cluster = Cluster([_node("bbbb11", 2, 2), _node("cccc22", 2, 2)])
    launched = []
    p = make_panel(form=True, cluster=cluster, gpu_poll=0.05,
                   launch=lambda **kw: launched.append(kw) or FakeSession(agents=2))
    cluster.nodes = [_node("bbbb11", 2, 2), _node("cccc22", 2, 0, alive=False), _node("dddd33", 1, 1)]
    wait_for(lambda: len(p.form.nodes_box.children) == 3, what="the new node's row")
    gone = p.form.node_rows[1]
    wait_for(lambda: "(gone)" in gone.label.value, what="the dead node marked gone")
    wait_for(lambda: all(b.disabled and not b.value for b in gone.boxes), what="its boxes off")
    assert p.form.node_rows[2].boxes[0].value is True  # a joining node's free GPU: ticked
    wait_for(lambda: "2 live nodes, 3 GPUs" in p.form.cluster_note.value, what="the cluster line")
    p.form.sweep.value = "abc123"
    p.start()
    assert launched[0]["gpus"] == {"bbbb11": 2, "dddd33": 1}
    # A node no longer listed at all (Ray forgot it) reads as gone too.
    p.stop(wait=True)
    cluster.nodes = [_node("dddd33", 1, 1)]
    first = p.form.node_rows[0]
    wait_for(lambda: "(gone)" in first.label.value and not any(b.value for b in first.boxes), what="forgotten node")
    wait_for(lambda: not p.start_button.disabled, what="Start on again")
    p.start()
    assert launched[1]["gpus"] == {"dddd33": 1}


def test_the_ray_view_refuses_no_ticks_and_offers_cpu_agents_without_gpus(make_panel):
    launched = []
    p = make_panel(form=True, cluster=Cluster([_node("bbbb11", 2, 0)]),
                   launch=lambda **kw: launched.append(kw) or FakeSession())
    p.form.sweep.value = "abc123"
    with pytest.raises(SweepMagicError, match="Tick at least one GPU of a live node"):
        p.start()
    cpu_only = make_panel(form=True, cluster=Cluster([_node("aaaa00", 0, 0, head=True), _node("bbbb11", 0, 0)]),
                          launch=lambda **kw: launched.append(kw) or FakeSession())
    assert cpu_only.form.cpu_mode and "CPU agents, one CPU each" in cpu_only.form.cluster_note.value
    cpu_only.form.sweep.value = "abc123"
    cpu_only.form.cpu_agents.value = 3
    cpu_only.start()
    assert launched == [{"function": launched[0]["function"], "sweep_id": "abc123", "count": None, "cpus": 3,
                         "backend": "ray"}]


def test_an_unreadable_cluster_is_shown_and_the_known_nodes_stay(make_panel):
    cluster = Cluster([_node("bbbb11", 2, 2)])
    p = make_panel(form=True, cluster=cluster, gpu_poll=0.05)

    def broken():
        raise ConnectionError("GCS unreachable")

    p._cluster = broken
    wait_for(lambda: "could not be read" in p.error.value and "GCS unreachable" in p.error.value,
             what="the error shown")
    assert len(p.form.node_rows) == 1 and "(gone)" not in p.form.node_rows[0].label.value
