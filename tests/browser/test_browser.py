"""The panel in a real browser: JupyterLab 4 from this venv, headless Debian Chromium, Playwright.

One test, end to end, because starting JupyterLab, a kernel and Chromium is the
expensive part on a 2-core machine:

1. a notebook (written here, in a temp root) defines a quick grid sweep, a slow
   one and ``train``; shows a panel over an injected 4-GPU inventory (the device
   picker as a GPU machine shows it) and ``%sweep_parallel`` (CPU mode: the
   kernel has no GPU);
2. the GPU panel renders its checkboxes, the busy GPU unticked;
3. in the CPU panel: type the quick config's name, press Start → real CPU agents
   run the local sweep → finished runs appear in the results, the best starred;
4. the slow config, Start, wait for a running run, press Stop all → stopped.

Screenshots go to ``test-artifacts/``.  Never skipped: no Chromium is a failure.
"""

from __future__ import annotations

import time

import nbformat
import pytest
from browser_helpers import JupyterLab, Steps, chromium, require_chromium, run_command, screenshot, wait_kernel_idle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

SETUP = '''\
%load_ext sweep_magic
import sweep_magic
from sweep_magic.devices import GpuInfo, GpuProcess
from sweep_magic.faces.panel import show_panel

quick = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
         "parameters": {"lr": {"values": [0.05, 0.2, 0.35, 0.5]}, "sleep": {"value": 0.05}}}
slow = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"lr": {"values": [1, 2, 3, 4, 5, 6]}, "sleep": {"value": 2.0}}}

def train():
    import time
    import wandb
    with wandb.init() as run:
        lr, pause = run.config.lr, run.config.sleep
        for step in range(8):
            run.log({"loss": (lr - 0.3) ** 2 + 0.5 / (step + 1)})
            print(f"step {step} lr={lr}")
            time.sleep(pause)
'''

GPU_PANEL = '''\
def _gpu(i, used, util, procs=()):
    return GpuInfo(index=i, uuid=f"GPU-demo-{i}", name="NVIDIA H200", memory_total_mib=143771.0,
                   memory_used_mib=used, utilization_pct=util, processes=tuple(procs), visible_id=str(i))
demo_gpus = [_gpu(0, 600, 3), _gpu(1, 600, 0),
             _gpu(2, 62000, 97, [GpuProcess(pid=31337, user="alice", memory_mib=61400.0, name="python")]),
             _gpu(3, 600, 0)]
gpu_panel = show_panel(inventory=lambda: demo_gpus, sweep_id="demo-sweep",
                       launch=sweep_magic.launch, local_sweep=sweep_magic.local_sweep)  # displays itself
'''

CPU_PANEL = "%sweep_parallel"

# A session launched by the magic shows itself as the panel without a form (panel_for).
MAGIC_SESSION = '''\
%%sweep_parallel --config tiny --cpus 1
tiny = {"method": "grid", "metric": {"name": "loss", "goal": "minimize"}, "parameters": {"x": {"values": [3, 1]}}}

def train_tiny():
    import wandb
    with wandb.init() as run:
        run.log({"loss": run.config.x})
'''


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (SETUP, GPU_PANEL, CPU_PANEL, MAGIC_SESSION)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def _cell_output(page, n):
    return page.locator(".jp-Notebook .jp-Cell").nth(n).locator(".jp-OutputArea")


def test_panel_in_jupyterlab(tmp_path):
    require_chromium()
    started = time.monotonic()
    root = tmp_path / "root"
    root.mkdir()
    _notebook(root / "panel.ipynb")
    env = {"SWEEP_MAGIC_HOME": str(tmp_path / "sm-home"), "WANDB_SILENT": "true"}
    steps = Steps("jupyterlab")
    with JupyterLab(root, env=env) as lab, chromium() as page:
        try:
            _drive(page, lab, steps)
        except BaseException as err:
            screenshot(page, "browser-failure.png")
            outputs = "".join(f"--- output of cell {n}:\n{_cell_text(page, n)}\n" for n in range(4))
            headline = steps.failed(page, lab.log_tail(), outputs)
            raise AssertionError(f"{headline} (test-artifacts/jupyterlab-failure.txt): {err}") from err
    print(f"browser test wall time: {time.monotonic() - started:.1f}s\n{steps.report()}")


def _drive(page, lab, steps):
    _run_all(page, lab.url("/lab/tree/panel.ipynb"), steps)
    gpu = _check_gpu_picker(page, steps)
    screenshot(gpu, "panel-gpus.png")

    # -- the CPU panel from %sweep_parallel: Start a real local sweep, see finished runs
    cpu = _cell_output(page, 2)
    start = cpu.get_by_title("start agents with these settings")
    stop = cpu.get_by_title("stop every agent of this sweep now")
    with steps.step("the %sweep_parallel panel renders its Start button", 90) as ms:
        start.wait_for(timeout=ms)
    assert "no GPU visible" in cpu.inner_text()
    assert stop.is_disabled()
    header = cpu.locator(".sweep-magic-header")
    results = cpu.locator(".sweep-magic-results")
    sweep_box = cpu.locator("input[placeholder^='sweep id']")
    sweep_box.fill("quick")
    sweep_box.press("Tab")  # the Text widget syncs its value on change
    start.click()
    _wait_text(page, steps, "header says running after Start", header, r"· running ·", 60)
    assert cpu.locator(".sweep-magic-error").inner_text().strip() == ""
    # Real CPU agents run the 4-point grid; the session ends when the grid is exhausted.
    _wait_text(page, steps, "the quick sweep finishes", header, r"· finished ·", 240)
    _wait_text(page, steps, "4 finished runs in the results table", results, r"(finished[\s\S]*){4}", 30)
    _wait_enabled(page, steps, "Start enabled again", start, True)
    assert stop.is_disabled()
    text = results.inner_text()
    assert "★" in text and "running" not in text, text
    # The chart catches up within the message budget: a dot per run, the best-so-far line.
    with steps.step("the chart shows 4 dots", 30) as ms:
        page.wait_for_function("el => el.querySelectorAll('circle').length === 4",
                               arg=cpu.locator(".sweep-magic-chart").element_handle(timeout=ms), timeout=ms)
    assert cpu.locator(".sweep-magic-chart polyline").count() == 1
    page.wait_for_timeout(2000)  # the rest of the last changes (agent rows), for the screenshot
    screenshot(cpu, "panel-finished.png")
    # The log tail folds out under its agent.
    cpu.get_by_title("show the log tail").first.click()
    _wait_text(page, steps, "the log tail folds out", cpu.locator(".sweep-magic-agents"),
               r"log of agent #0[\s\S]*step 7 lr=", 30)
    screenshot(cpu, "panel-log.png")
    cpu.get_by_title("show the log tail").first.click()

    # -- a second, slow sweep: Stop all stops it
    sweep_box.fill("slow")
    sweep_box.press("Tab")
    start.click()
    _wait_enabled(page, steps, "Stop enabled after the second Start", stop, True)
    _wait_text(page, steps, "the slow sweep has runs running", header, r"runs: .*\d+ running", 120)
    _wait_text(page, steps, "an agent row shows a step", cpu.locator(".sweep-magic-agents"), r"step", 30)
    screenshot(cpu, "panel-running.png")
    stop.click()
    _wait_text(page, steps, "header says stopped after Stop all", header, r"· stopped ·", 60)
    _wait_enabled(page, steps, "Stop disabled after stopping", stop, False)
    _wait_enabled(page, steps, "Start enabled after stopping", start, True)
    _wait_text(page, steps, "no run left running", results, r"^(?![\s\S]*running)", 30)
    screenshot(cpu, "panel-stopped.png")

    # -- the session %%sweep_parallel launched: its own live panel, no form, no Start
    magic = _cell_output(page, 3)
    _wait_text(page, steps, "the magic's session finishes", magic.locator(".sweep-magic-header"), r"· finished ·", 120)
    _wait_text(page, steps, "the magic's results: 2 finished, best starred", magic.locator(".sweep-magic-results"),
               r"★[\s\S]*(finished[\s\S]*){2}", 30)
    assert magic.locator("input[placeholder^='sweep id']").count() == 0
    assert magic.get_by_title("start agents with these settings").count() == 0
    assert magic.get_by_title("stop every agent of this sweep now").is_disabled()
    # The form's function list followed the cell that defined train_tiny.
    options = cpu.locator("select option").all_inner_texts()
    assert "train" in options and "train_tiny" in options, options
    screenshot(magic, "panel-session.png")
    screenshot(page, "jupyterlab.png")


def test_panel_in_notebook7(tmp_path):
    """The same panel in Notebook 7 (same widget manager, another shell): the GPU picker renders and
    Start runs real CPU agents to finished runs."""
    require_chromium()
    root = tmp_path / "root"
    root.mkdir()
    _notebook(root / "panel.ipynb")
    env = {"SWEEP_MAGIC_HOME": str(tmp_path / "sm-home"), "WANDB_SILENT": "true"}
    steps = Steps("notebook7")
    with JupyterLab(root, env=env, app="notebook") as nb7, chromium() as page:
        try:
            _run_all(page, nb7.url("/notebooks/panel.ipynb"), steps)
            _check_gpu_picker(page, steps)
            cpu = _cell_output(page, 2)
            start = cpu.get_by_title("start agents with these settings")
            with steps.step("the %sweep_parallel panel renders its Start button", 90) as ms:
                start.wait_for(timeout=ms)
            sweep_box = cpu.locator("input[placeholder^='sweep id']")
            sweep_box.fill("quick")
            sweep_box.press("Tab")
            start.click()
            _wait_text(page, steps, "the quick sweep finishes", cpu.locator(".sweep-magic-header"), r"· finished ·", 240)
            _wait_text(page, steps, "4 finished runs, best starred", cpu.locator(".sweep-magic-results"),
                       r"★[\s\S]*(finished[\s\S]*){4}", 30)
            screenshot(page, "notebook7.png")
        except BaseException as err:
            screenshot(page, "notebook7-failure.png")
            headline = steps.failed(page, nb7.log_tail())
            raise AssertionError(f"{headline} (test-artifacts/notebook7-failure.txt): {err}") from err
    print(steps.report())


def _run_all(page, url, steps):
    page.goto(url)
    with steps.step("the notebook's cells appear", 90) as ms:
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=ms)
    with steps.step("the kernel is idle", 120) as ms:
        wait_kernel_idle(page, timeout_ms=ms)
    run_command(page, "notebook:run-all-cells")


def _check_gpu_picker(page, steps):
    """The device picker over the injected 4-GPU inventory: GPU 2 (another user's process) unticked."""
    gpu = _cell_output(page, 1)
    with steps.step("the GPU picker renders its checkboxes", 90) as ms:
        gpu.locator(".widget-checkbox").first.wait_for(timeout=ms)
    # The GPU checkboxes (the form has another: "fresh process per run").
    boxes = gpu.locator(".widget-checkbox", has_text="GPU ").locator("input[type=checkbox]")
    assert boxes.count() == 4
    assert [boxes.nth(i).is_checked() for i in range(4)] == [True, True, False, True]
    assert "alice" in gpu.inner_text() and "(busy)" in gpu.inner_text()
    return gpu


def _wait_text(page, steps, what, locator, pattern, timeout_s):
    """Until the element's text matches ``pattern`` (a JS regex); one deadline covers both the
    element appearing and its text matching."""
    with steps.step(what, timeout_s) as ms:
        deadline = time.monotonic() + timeout_s
        handle = locator.element_handle(timeout=ms)
        left = max(1.0, deadline - time.monotonic()) * 1000
        page.wait_for_function("([el, p]) => new RegExp(p).test(el.innerText)", arg=[handle, pattern], timeout=left)


def _wait_enabled(page, steps, what, button, enabled, timeout_s=60):
    with steps.step(what, timeout_s) as ms:
        deadline = time.monotonic() + timeout_s
        handle = button.element_handle(timeout=ms)
        left = max(1.0, deadline - time.monotonic()) * 1000
        page.wait_for_function("([b, on]) => b.disabled !== on", arg=[handle, enabled], timeout=left)


def _cell_text(page, n: int) -> str:
    try:
        return _cell_output(page, n).inner_text(timeout=2000)[-2000:]
    except Exception as err:  # the page itself may be what broke
        return f"(unavailable: {err})"
