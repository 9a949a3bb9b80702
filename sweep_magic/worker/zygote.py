"""The warm start server: one fresh interpreter per kernel that imports wandb and the
worker once, then forks a worker for each agent the kernel asks for.

    python -m sweep_magic.worker.zygote --control-fd N

A fork of this process is safe where a fork of the kernel is not: it has one thread, no
IPython, no CUDA and no wandb-core (``check_forkable`` makes sure).  Requests come on a
Unix seqpacket socket, each a JSON header with three descriptors attached (the agent's
events pipe, lifeline and log file)::

    kernel → zygote   {"spec": path, "env": {...}, "cwd": dir}  + [events, lifeline, log]
    zygote → kernel   {"pid": 1234}                 after the fork
    zygote → kernel   {"exit": 1234, "code": -9}    when that worker ended (waitpid)

The zygote dies with the kernel: the kernel holds the only other end of the control socket,
so its death is an EOF here.  (Not PR_SET_PDEATHSIG: that fires when the kernel *thread*
that started us ends, and any thread may start the zygote.)  The workers it forked are not
tied to it but to the kernel, through their own lifelines: the zygote's end is not theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import threading

from sweep_magic._wandb import AGENT_MODULES

PRELOAD = (*AGENT_MODULES, "cloudpickle", "psutil", "sweep_magic.worker.main", "sweep_magic.worker.hooks",
           "sweep_magic.worker.forked")  # fmt: skip
MAX_MESSAGE = 1 << 20


def check_forkable() -> str | None:
    """Why forking this process would be unsafe, or None."""
    if threading.active_count() != 1:
        return f"{threading.active_count()} threads after the imports"
    if any(name in sys.modules for name in ("torch", "IPython", "jax", "tensorflow")):
        return "a heavy framework got imported"
    return None


def _send(sock: socket.socket, message: dict) -> None:
    try:
        sock.send(json.dumps(message).encode())
    except OSError:
        pass  # the kernel is gone; the loop ends on EOF


def _fork_worker(sock: socket.socket, wake_r: int, request: dict, fds: list[int]) -> int:
    pid = os.fork()
    if pid == 0:
        # The worker: nothing of the zygote's plumbing, default signal dispositions.
        try:
            sock.close()
            os.close(wake_r)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            from sweep_magic.worker.forked import run

            run(request["spec"], fds[0], fds[1], fds[2], request["env"], request["cwd"])
        finally:
            os._exit(70)  # run() exits itself; reaching here means it raised
    for fd in fds:
        os.close(fd)
    return pid


def serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the handler's only job is the wakeup byte
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                os.read(wake_r, 4096)
                _reap(sock)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 3)
            except OSError:
                return
            if not data:
                return  # the kernel closed its end: it is gone or done with us
            request = json.loads(data)
            if len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                _send(sock, {"error": f"expected 3 descriptors, got {len(fds)}"})
                continue
            _send(sock, {"pid": _fork_worker(sock, wake_r, request, fds)})


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep_magic.worker.zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.control_fd)
    for name in PRELOAD:
        __import__(name)
    problem = check_forkable()
    _send(sock, {"ready": problem is None, "problem": problem})
    if problem is None:
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
