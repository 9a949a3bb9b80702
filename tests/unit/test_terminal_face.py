"""The terminal face on made-up snapshots: the live block's bounds, redraws, notes, plain lines."""

from __future__ import annotations

import io
import re

from sweep_magic.faces import terminal
from sweep_magic.snapshot import AgentSnapshot, RunSnapshot, SessionSnapshot


def _snap(state="running", agents=2, runs=(), version=1):
    return SessionSnapshot(
        session_id="s1", sweep_id="abc", state=state, version=version, metric_name="loss", metric_goal="minimize",
        agents=tuple(AgentSnapshot(index=i, device=f"cpu {i}", state="running" if state == "running" else "exited",
                                   current_run=f"r{i}" if state == "running" else None) for i in range(agents)),
        runs=tuple(runs), started_at=1.0,
    )


def _run(i, state="finished", agent=0):
    return RunSnapshot(run_id=f"r{i}", agent=agent, name=f"r{i}", config={"x": i}, state=state,
                       summary={"loss": float(i)} if state == "finished" else {}, started_at=1.0, ended_at=2.0)


def test_block_fits_the_window_agents_first():
    runs = [_run(i) for i in range(40)]
    latest = [f"run r{i} finished" for i in range(5)]
    for rows in (4, 8, 12, 40):
        lines = terminal.block(_snap(agents=30, runs=runs), latest, footer="hint", rows=rows)
        assert len(lines) <= max(3, rows - 1)
        assert lines[0].startswith("sweep abc") and lines[-1] == "hint"
    lines = terminal.block(_snap(agents=30, runs=runs), latest, footer="hint", rows=40)
    assert len([line for line in lines if "[agent" in line]) == terminal.MAX_AGENT_LINES - 1
    assert "… 15 more agents" in lines[terminal.MAX_AGENT_LINES]
    assert lines[-7] == "  latest:" and lines[-2].endswith("run r4 finished")


def test_live_view_redraws_in_place_and_notes_go_above():
    out, err = io.StringIO(), io.StringIO()
    view = terminal.TerminalView(out, live=True, size=lambda: (60, 10))
    view.update(_snap(version=1))
    view.update(_snap(version=2, runs=[_run(1, "running")]), force=True)
    first, second = out.getvalue().split("\x1b[J")[:2]
    height = first.count("\n")
    assert second.startswith(f"\r\x1b[{height}A")
    plain = re.sub(r"\r|\x1b\[\d*[A-Za-z]", "", out.getvalue())
    assert all(len(line) < 60 for line in plain.splitlines())
    view.note("draining", err)
    assert err.getvalue() == "draining\n" and out.getvalue().endswith("\x1b[J")
    view.finish(_snap("finished", runs=[_run(1), _run(0)], version=3))
    tail = out.getvalue().rsplit("\x1b[J", 1)[1]
    assert re.search(r"^1\s+r0\s+0\s+finished", tail, re.M) and "\x1b" not in tail


def test_plain_view_appends_lines_without_escapes():
    out = io.StringIO()
    view = terminal.TerminalView(out, live=False)
    view.update(_snap(version=1))
    view.update(_snap(version=2, runs=[_run(0, "running")]))
    view.update(_snap(version=2, runs=[_run(0, "running")]))  # no change: nothing new
    view.finish(_snap("finished", runs=[_run(0)], version=3))
    text = out.getvalue()
    assert "\x1b" not in text and text.count("run r0 started") == 1 and text.count("run r0 finished") == 1
    assert text.splitlines()[0].startswith("sweep abc") and text.rstrip().splitlines()[-1].startswith("1  r0")
