"""The fork server: a pre-imported interpreter that forks one child per run (``isolate="run"``).

    worker (agent) ──Popen, own process group──► python -m sweep_magic.worker.forkserver
      ForkServer (client)                          imports wandb & co. once, never starts a
        control socket (SEQPACKET) ◄────────────►  thread, wandb-core or CUDA; then loops:
          spawn {run_id, env, cwd, …} + run pipe fd    fork → run child (own process group)
          ◄── spawned {pid} / exited {pid, code}       pidfd readable → waitpid → exited
        run lifeline (write end) ─────────────────► read end, inherited by every run child

A fresh interpreter that imports wandb and initialises a run costs 0.5–1.3 s; a fork of
this one starts a run child in milliseconds, with wandb (and what ``wandb.init`` imports
lazily: ``wandb.sdk.launch``, the public API's pydantic models) already imported.  Forking
is safe here only because this process is single-threaded and never touched wandb-core
or CUDA: the agent itself (threads, wandb-core) and the kernel are never forked.

The function's pickle is read here once (from a 0600 file, deleted at once) but only
unpickled in each child: unpickling imports the user's modules, which may start threads
or CUDA, and each run must start from a clean copy of its globals anyway.

It dies with the agent: EOF on the control socket or the lifeline, or SIGTERM (its
parent-death signal), SIGKILLs every run child's group, then exits.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time

from sweep_magic._wandb import RUN_MODULES

PRELOAD = ("cloudpickle", "yaml", *RUN_MODULES, "sweep_magic.worker.hooks", "sweep_magic.worker.run_child")
MAX_MESSAGE = 1 << 20


def _preload() -> list[str]:
    problems = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - the child imports it itself then, slower but correct
            problems.append(f"{name}: {err!r}")
    return problems


class Server:
    def __init__(self, ctrl: socket.socket, lifeline_fd: int, payload: bytes):
        self.ctrl = ctrl
        self.lifeline = lifeline_fd
        self.payload = payload
        self.children: dict[int, int] = {}  # pidfd → pid (pid = its process group)
        self.polled: set[int] = set()  # pids watched by polling (no pidfd_open)

    def send(self, body: dict) -> None:
        try:
            self.ctrl.send(json.dumps(body).encode())
        except OSError:
            self.shutdown()

    def shutdown(self, *_args) -> None:
        for pid in [*self.children.values(), *self.polled]:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        os._exit(0)

    def loop(self) -> None:
        while True:
            watched = [self.ctrl, self.lifeline, *self.children]
            ready, _, _ = select.select(watched, [], [], 0.05 if self.polled else None)
            for fd in ready:
                if fd is self.ctrl:
                    self._request()
                elif fd == self.lifeline:
                    if not _read_some(self.lifeline):
                        self.shutdown()
                else:
                    self._reap(self.children.pop(fd), fd)
            for pid in list(self.polled):
                self._reap(pid, None)

    def _request(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctrl, MAX_MESSAGE, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            self.shutdown()  # the agent is gone
        request = json.loads(data)
        events_fd = fds[0]
        for extra in fds[1:]:
            os.close(extra)
        sys.stdout.flush()
        sys.stderr.flush()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._child(request, events_fd, me)  # never returns
        try:
            os.setpgid(pid, pid)  # as the child does: whichever runs first, the group exists
        except OSError:
            pass
        os.close(events_fd)
        try:
            self.children[os.pidfd_open(pid)] = pid
        except (AttributeError, OSError):
            self.polled.add(pid)
        self.send({"op": "spawned", "rid": request.get("rid"), "pid": pid})

    def _child(self, request: dict, events_fd: int, parent: int) -> None:
        code = 70
        try:
            self.ctrl.close()
            for fd in self.children:
                os.close(fd)
            from sweep_magic.worker import run_child

            run_child.child_setup(self.lifeline, events_fd)
            if os.getppid() != parent:
                os._exit(1)  # we died in between: nobody would reap or stop this run
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            code = run_child.run_function(self.payload, request, events_fd)
        except BaseException:  # noqa: BLE001 - the child must always end through os._exit
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reap(self, pid: int, pidfd: int | None) -> None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 255 << 8
        if done == 0:
            if pidfd is not None:
                self.children[pidfd] = pid  # spurious wakeup: keep watching
            return
        if pidfd is not None:
            os.close(pidfd)
        self.polled.discard(pid)
        # Its group may outlive it (the user's own subprocesses): they go with the run.
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        self.send({"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _read_some(fd: int) -> bool:
    try:
        return bool(os.read(fd, 64))
    except InterruptedError:
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep_magic.worker.forkserver")
    parser.add_argument("--ctrl-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--payload", required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    ctrl = socket.socket(fileno=args.ctrl_fd)
    with open(args.payload, "rb") as f:
        payload = f.read()
    os.unlink(args.payload)
    server = Server(ctrl, args.lifeline_fd, payload)
    signal.signal(signal.SIGTERM, server.shutdown)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl-C is the agent's to handle
    from sweep_magic.worker.run_child import parent_death_signal

    parent_death_signal(signal.SIGTERM)
    problems = _preload()
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        # Forking a process with threads can deadlock the child: refuse, the agent spawns instead.
        server.send({"op": "refused", "why": f"threads started while importing: {threads}"})
        return 1
    server.send({"op": "ready", "pid": os.getpid(), "seconds": round(time.monotonic() - started, 3),
                 "problems": problems})
    server.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
