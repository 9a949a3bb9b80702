"""A JupyterLab server and a headless Chromium for the browser test, started and stopped cleanly.

``JupyterLab`` runs ``python -m jupyterlab`` from this venv on 127.0.0.1, a free port, a
random token and a temporary root, with its config/runtime/settings folders inside
that root so the developer's own Jupyter setup neither leaks in nor gets touched.
On exit it shuts every kernel down through the REST API (kernels are its children,
and the sweep's workers are theirs: the conftest fails a test that leaves any), then
asks the server to shut down, and only then escalates to SIGTERM/SIGKILL.

``chromium()`` launches Debian's ``/usr/bin/chromium`` through Playwright with
``executable_path``: no browser is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("SWEEP_MAGIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def require_chromium() -> str:
    """The browser test must run, never skip: a missing browser is a failure with a fix."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise AssertionError(
            f"Chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install chromium) "
            "or point SWEEP_MAGIC_CHROMIUM at a Chromium binary; the browser test does not download one."
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        raise AssertionError(f"playwright (the Python package) is missing: pip install playwright ({err})") from None
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """``with JupyterLab(root) as lab: lab.url(...)`` — a private JupyterLab for one test."""

    def __init__(self, root: Path, env: dict | None = None, startup_timeout: float = 90.0, app: str = "jupyterlab"):
        self.app = app  # "jupyterlab", or "notebook" for Notebook 7 (same server, same widget manager)
        self.root = Path(root)
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root.parent / "jupyterlab.log"
        self._extra_env = env or {}
        self._timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    # -- REST API
    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"

    # -- lifetime
    def __enter__(self) -> JupyterLab:
        home = self.root.parent / "jupyter-home"
        for sub in ("config", "runtime", "settings", "workspaces"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        # Skip the "get notified about news?" toast: it covers the notebook in screenshots.
        plugin = home / "settings" / "@jupyterlab" / "apputils-extension"
        plugin.mkdir(parents=True, exist_ok=True)
        (plugin / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        # Render every cell: with windowing, cells off screen are not in the DOM (or hidden
        # by content-visibility) and a locator waits for them forever.
        nb_settings = home / "settings" / "@jupyterlab" / "notebook-extension"
        nb_settings.mkdir(parents=True, exist_ok=True)
        (nb_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "PYTHONUNBUFFERED": "1",
            # The kernel imports sweep_magic from this checkout even when it is not pip-installed.
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            **self._extra_env,
        }
        cmd = [
            sys.executable, "-m", self.app,
            "--no-browser", "--ServerApp.open_browser=False",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            # window.jupyterapp: run commands, not menu hunting
            f"--{'LabApp' if self.app == 'jupyterlab' else 'JupyterNotebookApp'}.expose_app_in_browser=True",
            *(["--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"] if self.app == "jupyterlab" else []),
            "--ServerApp.terminals_enabled=False",
            "--LanguageServerManager.autodetect=False",
        ]
        if self.app == "jupyterlab":
            cmd.append("--LabApp.extension_manager=readonly")  # no PyPI lookups from a test
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self._timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"JupyterLab did not answer within {self._timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def shutdown_kernels(self) -> None:
        with contextlib.suppress(Exception):
            for kernel in self.api("GET", "/api/kernels"):
                with contextlib.suppress(Exception):
                    self.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=30)

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.shutdown_kernels()
            with contextlib.suppress(Exception):
                self.api("POST", "/api/shutdown", timeout=10)
            for sig, wait in ((None, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                if sig is not None and self.proc.poll() is None:
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        self.proc = None


@contextlib.contextmanager
def chromium(viewport=(1400, 1000)):
    """A Playwright page in headless Debian Chromium; closed (browser and driver) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()


def run_command(page, command: str, args: dict | None = None) -> None:
    """Run a JupyterLab command (``notebook:run-all-cells`` …) through the exposed app."""
    page.evaluate("([c, a]) => window.jupyterapp.commands.execute(c, a)", [command, args or {}])


def wait_kernel_idle(page, timeout_ms: float = 120_000) -> None:
    """Until the notebook's kernel reports idle (the status in the toolbar/footer)."""
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return !!k && k.status === 'idle';
        }""",
        timeout=timeout_ms,
    )


def screenshot(page_or_locator, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page_or_locator.screenshot(path=str(path))
    return path


def save_copy(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)


class Steps:
    """Every wait of a browser test, named and timed.

    On a timeout the failure names the step, its limit and how long the earlier steps
    took, and ``test-artifacts/<name>-failure.txt`` keeps that with the page's text and
    the server log (next to the screenshot), so a flake under load says which wait was
    too tight instead of "Timeout 30000ms exceeded".  On success the timeline is printed:
    how close each wait came to its limit, measured, not guessed.
    """

    def __init__(self, name: str):
        self.name = name
        self.timeline: list[tuple[str, float, float]] = []  # (step, seconds taken, limit)
        self.current: tuple[str, float] | None = None

    @contextlib.contextmanager
    def step(self, what: str, limit_s: float):
        started = time.monotonic()
        self.current = (what, limit_s)
        yield limit_s * 1000  # Playwright's timeouts are in milliseconds
        self.timeline.append((what, time.monotonic() - started, limit_s))
        self.current = None

    def report(self) -> str:
        lines = [f"{took:7.1f}s of {limit:5.0f}s  {what}" for what, took, limit in self.timeline]
        return "\n".join(lines)

    def failed(self, page, log_tail: str, extra: str = "") -> str:
        what, limit = self.current or ("(between steps)", 0.0)
        headline = f"browser step {what!r} did not complete within {limit:.0f}s"
        try:
            page_text = page.inner_text("body", timeout=2000)[-4000:]
        except Exception as err:  # the page itself may be what broke
            page_text = f"(page text unavailable: {err})"
        ARTIFACTS.mkdir(exist_ok=True)
        text = (f"{headline}\n\nsteps before it:\n{self.report()}\n\n{extra}\n"
                f"--- page text (end):\n{page_text}\n--- server log (end):\n{log_tail}\n")
        (ARTIFACTS / f"{self.name}-failure.txt").write_text(text)
        return headline
