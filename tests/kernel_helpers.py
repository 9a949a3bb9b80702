"""A real kernel started by jupyter_client, as JupyterLab starts one (``allow_stdin=True``)."""

from __future__ import annotations

import time

from jupyter_client import KernelManager


class Kernel:
    def __init__(self):
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> str:
        """Run a cell to its end; its stream output (and any traceback) as text."""
        out: list[str] = []

        def hook(msg):
            content = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(content["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(content["traceback"]))

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=True)
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)

    def start(self, code: str) -> str:
        """Send a cell without waiting for it; its message id."""
        return self.kc.execute(code, allow_stdin=True)

    def finish(self, msg_id: str, timeout: float = 300) -> None:
        """Wait for the reply to a cell sent with ``start``; it must be ok."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.kc.get_shell_msg(timeout=deadline - time.monotonic())
            if reply["parent_header"].get("msg_id") == msg_id:
                assert reply["content"]["status"] == "ok", reply["content"]
                return
        raise AssertionError("the cell did not end in time")

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=False)
        self.km.cleanup_resources()
