"""Pure rendering for the panel: snapshots and GPU records in, HTML strings out.

Nothing here imports ipywidgets, so every piece of the panel's look can be tested
as plain strings.  Everything that came from the user, a run or a process (names,
configs, metric values, log lines, error text) goes through ``esc`` — a run's name
or a log line is user data and may contain ``<``.
"""

from __future__ import annotations

import html
import math
import time

from sweep_magic.errors import last_line
from sweep_magic.faces.fmt import fmt_seconds
from sweep_magic.faces.fmt import fmt_value as _fmt_value
from sweep_magic.snapshot import AgentSnapshot, RunSnapshot, SessionSnapshot

# Colours by state: green for work going on, grey for idle/ended well, red for trouble.
STATE_COLOURS = {
    "starting": "#b08800",
    "idle": "#6a737d",
    "running": "#22863a",
    "draining": "#b08800",
    "restarting": "#e36209",
    "exited": "#6a737d",
    "failed": "#cb2431",
    "killed": "#cb2431",
    "finished": "#22863a",
    "crashed": "#cb2431",
    "stopping": "#b08800",
    "stopped": "#6a737d",
}
BAD_RUN_STATES = frozenset({"failed", "crashed", "killed"})

# The agents table is a CSS grid so the header and each agent's row line up even
# though each row is its own widget (a row per agent keeps its buttons beside it).
AGENT_COLUMNS = "3em 6em 5.5em 6.5em minmax(10em,2fr) 4em minmax(8em,2fr) 3.5em 4em"
_GRID = f"display:grid;grid-template-columns:{AGENT_COLUMNS};gap:0 .6em;align-items:baseline;font-size:12px"
_MONO = "font-family:var(--jp-code-font-family,monospace)"


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt_value(value) -> str:
    return _fmt_value(value, width=40)


def fmt_dict(values: dict, limit: int = 4) -> str:
    items = [f"{k}={fmt_value(v)}" for k, v in list(values.items())[:limit] if not str(k).startswith("_")]
    more = len(values) - limit
    return ", ".join(items) + (f", +{more}" if more > 0 else "")


def state_badge(state: str) -> str:
    colour = STATE_COLOURS.get(state, "#24292e")
    return f'<span style="color:{colour};font-weight:600">{esc(state)}</span>'


# ---------------------------------------------------------------- header


def header_html(snap: SessionSnapshot | None, note: str = "") -> str:
    if snap is None:
        return f"<b>sweep_magic</b> — no sweep running. {esc(note)}"
    counts: dict[str, int] = {}
    for run in snap.runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    runs = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no runs yet"
    end = snap.ended_at if snap.ended_at is not None else time.time()
    elapsed = fmt_seconds(end - snap.started_at, empty="") if snap.started_at else ""
    best = snap.best_run()
    best_text = ""
    if best is not None:
        best_text = f" · best <b>{esc(best.name)}</b> {esc(snap.metric_name)}={esc(fmt_value(best.metric(snap.metric_name)))}"
    return (
        f"<b>sweep {esc(snap.sweep_id)}</b> · {state_badge(snap.state)} · {len(snap.agents)} agents"
        f" · runs: {esc(runs)}{best_text} · {esc(elapsed)}"
        + (f" · {esc(note)}" if note else "")
        + "".join(f'<div style="color:#b08800">{esc(text)}</div>' for text in snap.notices)
    )


def error_html(message: str | None) -> str:
    if not message:
        return ""
    return f'<div style="color:#cb2431;white-space:pre-wrap;{_MONO};font-size:12px">{esc(message)}</div>'


# ---------------------------------------------------------------- agents


def agents_header_html() -> str:
    cells = ["agent", "device", "pid", "state", "run (config)", "step", "latest metrics", "runs", "restarts"]
    return f'<div style="{_GRID};font-weight:600;border-bottom:1px solid #ccc">' + "".join(f"<span>{c}</span>" for c in cells) + "</div>"


def agent_row_html(agent: AgentSnapshot, run: RunSnapshot | None) -> str:
    if run is not None:
        run_cell = f"<b>{esc(run.name)}</b> <span style='color:#586069'>{esc(fmt_dict(run.config))}</span>"
        step = "" if run.step is None else str(run.step)
        metrics = esc(fmt_dict(run.metrics))
    else:
        run_cell = f"<span style='color:#586069'>{esc(agent.reason or '')}</span>"
        step, metrics = "", ""
    cells = [
        f"#{agent.index}",
        esc(agent.device + (f" @ {agent.node}" if agent.node else "")),  # a Ray node; "" = this machine
        "" if agent.pid is None else str(agent.pid),
        state_badge(agent.state),
        run_cell,
        step,
        metrics,
        str(agent.runs_done),
        str(agent.restarts),
    ]
    return f'<div style="{_GRID}">' + "".join(f"<span>{c}</span>" for c in cells) + "</div>"


def log_html(agent: AgentSnapshot, lines: int = 15) -> str:
    """The newest ``lines`` of the agent's output (an HTML box cannot be scrolled to its end)."""
    where = f" ({esc(agent.log_path)})" if agent.log_path else ""
    tail = agent.log_tail[-lines:]
    body = esc("\n".join(tail)) if tail else "(no output yet)"
    return (
        f'<div style="font-size:11px;color:#586069">log of agent #{agent.index}{where}</div>'
        f'<pre style="overflow:auto;margin:0;padding:4px;background:var(--jp-layout-color2,#f6f8fa);'
        f'font-size:11px;line-height:1.3">{body}</pre>'
    )


# ---------------------------------------------------------------- results


def results_html(snap: SessionSnapshot | None, limit: int = 30) -> str:
    if snap is None or not snap.runs:
        return "<i>No runs yet.</i>"
    name = snap.metric_name
    best = snap.best_run()
    ranked = snap.ranked_runs()
    rows = []
    for rank, run in enumerate(ranked[:limit], 1):
        is_best = best is not None and run.run_id == best.run_id
        bad = run.state in BAD_RUN_STATES
        style = "color:#cb2431" if bad else ("font-weight:600;background:#e6ffed" if is_best else "")
        value = run.metric(name)
        error = f" — {esc(last_line(run.error))}" if bad and last_line(run.error) else ""
        rows.append(
            f'<tr style="{style}"><td>{"★" if is_best else rank}</td><td>{esc(run.name)}</td>'
            f"<td>{state_badge(run.state)}{error}</td><td>{esc(fmt_value(value)) if value is not None else ''}</td>"
            f"<td>{esc(fmt_dict(run.config, 6))}</td><td>{esc(fmt_seconds(run.duration, empty=''))}</td><td>#{run.agent}</td></tr>"
        )
    more = len(ranked) - limit
    goal = f" ({esc(snap.metric_goal)})" if snap.metric_goal else ""
    head = (
        "<tr style='text-align:left'><th>#</th><th>run</th><th>state</th>"
        f"<th>{esc(name or 'metric')}{goal}</th><th>config</th><th>time</th><th>agent</th></tr>"
    )
    tail = f"<div style='color:#586069'>+{more} more (sweep.results() has them all)</div>" if more > 0 else ""
    return f'<table style="font-size:12px;border-collapse:collapse">{head}{"".join(rows)}</table>{tail}'


def chart_svg(snap: SessionSnapshot | None, width: int = 420, height: int = 160, max_runs: int = 400) -> str:
    """The sweep metric of each run in start order, with the best-so-far line.

    An inline SVG keeps the panel free of a plotting dependency; it is redrawn
    only when the snapshot's runs change, so its size per message stays small.
    """
    if snap is None or not snap.metric_name:
        return ""
    name, maximize = snap.metric_name, snap.metric_goal == "maximize"
    points = []  # (x, value, run)
    first = max(0, len(snap.runs) - max_runs)  # a long sweep: the latest runs, the message stays small
    for i, run in enumerate(snap.runs[first:], first):
        value = run.metric(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            points.append((i, float(value), run))
    if not points:
        return f"<div style='color:#586069;font-size:12px'>{esc(name)}: no values yet</div>"
    pad_l, pad_r, pad_t, pad_b = 46, 8, 14, 20
    xs = max(len(snap.runs) - 1 - first, 1)
    lo = min(v for _, v, _ in points)
    hi = max(v for _, v, _ in points)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5

    def px(i: float) -> float:
        return pad_l + (width - pad_l - pad_r) * (i - first) / xs

    def py(v: float) -> float:
        return pad_t + (height - pad_t - pad_b) * (hi - v) / (hi - lo)

    best_line, best = [], None
    for i, value, run in points:
        if run.state != "finished":
            continue
        if best is None or (value > best if maximize else value < best):
            best = value
        best_line.append(f"{px(i):.1f},{py(best):.1f}")
    dots = []
    for i, value, run in points:
        colour = "#cb2431" if run.state in BAD_RUN_STATES else ("#0366d6" if run.state == "finished" else "#959da5")
        fill = colour if run.state != "running" else "none"
        dots.append(
            f'<circle cx="{px(i):.1f}" cy="{py(value):.1f}" r="3" fill="{fill}" stroke="{colour}">'
            f"<title>{esc(run.name)}: {esc(fmt_value(value))}</title></circle>"
        )
    line = f'<polyline points="{" ".join(best_line)}" fill="none" stroke="#22863a" stroke-width="1.5"/>' if best_line else ""
    axis = (
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#ccc"/>'
        f'<text x="{pad_l - 4}" y="{py(hi) + 4:.1f}" text-anchor="end" font-size="10">{esc(fmt_value(hi))}</text>'
        f'<text x="{pad_l - 4}" y="{py(lo) + 4:.1f}" text-anchor="end" font-size="10">{esc(fmt_value(lo))}</text>'
        f'<text x="{width - pad_r}" y="{height - 6}" text-anchor="end" font-size="10">run (start order) →</text>'
        f'<text x="{pad_l}" y="10" font-size="10">{esc(name)} · green: best so far</text>'
    )
    return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{axis}{line}{"".join(dots)}</svg>'


# ---------------------------------------------------------------- GPUs


def gpu_html(gpu, me: str | None = None) -> str:
    """One GPU's figures beside its checkbox: name, memory, utilisation, other users."""
    gib = 1024.0
    util = "" if gpu.utilization_pct is None else f" · {gpu.utilization_pct:.0f}% util"
    text = f"{esc(gpu.name)} · {gpu.memory_used_mib / gib:.1f}/{gpu.memory_total_mib / gib:.1f} GiB{util}"
    procs = []
    for proc in gpu.processes:
        mem = "" if proc.memory_mib is None else f" {proc.memory_mib / gib:.1f} GiB"
        who = proc.user or "?"
        if me is not None and proc.user == me:
            who += " (you)"
        procs.append(f"{esc(who)} pid {proc.pid}{esc(mem)}")
    busy = gpu.busy(my_user=me)
    colour = "#cb2431" if busy else "#586069"
    others = f' · <span style="color:{colour}">{"; ".join(procs)}</span>' if procs else ""
    flag = ' <span style="color:#cb2431">(busy)</span>' if busy else ""
    return f'<span style="font-size:12px">{text}{others}{flag}</span>'


def node_html(node) -> str:
    """One Ray node beside its GPU checkboxes: its label, host, GPUs (free, by Ray's
    accounting) and CPUs; a node that is gone says so in red."""
    free = "" if node.gpus_free is None or not node.gpus else f", {node.gpus_free} free"
    gpus = f"{node.gpus} GPU{'s' if node.gpus != 1 else ''}{free}" if node.gpus else "no GPU"
    host = f" · {esc(node.hostname)}" if node.hostname and node.hostname != node.address else ""
    head = " · head" if node.head else ""
    gone = ' <span style="color:#cb2431">(gone)</span>' if not node.alive else ""
    return (f'<span style="font-size:12px"><b>node {esc(node.label)}</b>{host}{head} · {gpus} · '
            f'{node.cpus:g} CPUs{gone}</span>')


def cluster_html(nodes: list) -> str:
    """The line above a Ray cluster's nodes: what it has, and what a tick means."""
    live = [n for n in nodes if n.alive]
    gpus = sum(n.gpus for n in live)
    what = f"{len(live)} live node{'s' if len(live) != 1 else ''}, {gpus} GPU{'s' if gpus != 1 else ''}"
    how = ("tick GPUs per node; Ray picks which of a node's GPUs each agent gets" if gpus
           else "no GPU: CPU agents, one CPU each")
    return f'<b>devices</b> — Ray cluster: {what} <span style="font-size:12px;color:#586069">({how})</span>'
