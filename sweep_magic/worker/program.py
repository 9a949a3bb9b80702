"""Program sweeps: each run executes the sweep's command, as the ``wandb agent`` CLI would.

``launch(None, sweep_id)`` on a sweep whose config has ``program:`` (or ``command:``)
runs the real ``wandb.agent`` with ``ProgramRuns`` as its function: for each run it
builds the command line and the environment the way ``wandb/wandb_agent.py`` (0.31)
does, and runs it in a process group of its own from the current directory.

Behaviour reproduced from the CLI agent (our own code, checked against the real CLI by
``tests/processes/test_program.py``):

* the command is the config's ``command`` list, else ``${env} ${interpreter} ${program}
  ${args}``; ``${envvar:NAME}`` inside any token becomes ``$NAME`` (NAME itself when unset);
* a token that is exactly ``${macro}`` expands to a list: ``env`` → ``/usr/bin/env``,
  ``interpreter`` → ``python`` (from PATH, not this interpreter), ``program`` → the run
  command's ``program``, ``args`` → ``--k=v``, ``args_no_equals`` → ``--k v``,
  ``args_no_hyphens`` → ``k=v``, ``args_no_boolean_flags`` (True → ``--k``, False dropped),
  ``args_json`` (one JSON argument), ``args_json_file`` (a path; the file is written only
  when the command uses it), ``args_append_hydra`` → ``+k=v``, ``args_override_hydra`` →
  ``++k=v``, ``args_dict`` → the parameter names (the CLI extends the list by a dict);
  an unknown or empty macro disappears; values print as Python's ``str`` does;
* the environment is the agent's, with WANDB_RUN_ID, WANDB_SWEEP_ID and
  WANDB_SWEEP_PARAM_PATH (pyagent wrote the YAML, as the CLI does), minus WANDB_SERVICE;
  stdin is a pipe closed at once; a stop is SIGTERM to the group (then SIGKILL).

Added by sweep_magic: ``SWEEP_MAGIC_CHILD`` and our ``_inject`` folder first on
PYTHONPATH, so a Python program's interpreter hooks its own ``wandb.init`` and streams
live metrics (``run_child.activate_from_env``); the program's stderr is copied to the
agent's log and its last line kept as a failed run's error; and a small exec guard
(``GUARD``) that makes the program die with the agent (its parent-death signal).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

from sweep_magic.worker.isolation import Isolation, SpawnedChild, _groups
from sweep_magic.worker.run_child import CHILD_VAR

DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
INJECT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_inject")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs between fork and the program's exec, in a bare interpreter (-S: no site, no hooks):
# its own process group, SIGKILL when the agent's run thread is gone, then the program.
GUARD = (
    "import ctypes, os, sys\n"
    "os.setpgid(0, 0)\n"
    "try:\n    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)\n"
    "except Exception:\n    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n    os._exit(1)\n"
    "try:\n    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as err:\n"
    "    sys.stderr.write(f'sweep_magic: cannot run {sys.argv[2]!r}: {err}\\n')\n    os._exit(127)\n"
)


def sweep_vars(args: dict) -> dict:
    """The argument macros for one run's ``args`` ({name: {"value": v}})."""
    values = {}
    for name, spec in args.items():
        if not isinstance(spec, dict) or "value" not in spec:
            raise ValueError(f"no value for parameter {name!r} in the run command")
        values[name] = spec["value"]
    pairs = [f"{k}={v}" for k, v in values.items()]
    return {
        "args": ["--" + p for p in pairs],
        "args_no_equals": [x for k, v in values.items() for x in (f"--{k}", str(v))],
        "args_no_hyphens": pairs,
        "args_no_boolean_flags": [f"--{k}" if isinstance(v, bool) else f"--{k}={v}"
                                  for k, v in values.items() if not (isinstance(v, bool) and not v)],
        "args_json": [json.dumps(values)],
        "args_dict": list(values),  # the CLI does `list += dict`: the names
        "args_append_hydra": ["+" + p for p in pairs],
        "args_override_hydra": ["++" + p for p in pairs],
    }


def with_envvars(tokens, env) -> list:
    """``${envvar:NAME}`` inside any token → the variable's value (its name when unset)."""
    out = []
    for token in tokens:
        if isinstance(token, str):
            token = ENVVAR.sub(lambda m: env.get(m.group(1), m.group(1)), token)
        out.append(token)
    return out


def build(command, run: dict, env: dict, *, sweep_id: str, wandb_dir: str) -> tuple[list[str], str | None]:
    """(argv, args-json-file path or None) for one run command ({run_id, args, program})."""
    tokens = with_envvars(list(command or DEFAULT_COMMAND), env)
    macros = sweep_vars(run.get("args") or {})
    json_file = os.path.join(wandb_dir, "wandb", f"sweep-{sweep_id}", f"config-{run.get('run_id')}.json")
    macros.update(interpreter=["python"], program=[run.get("program")], args_json_file=[json_file])
    if sys.platform != "win32":
        macros["env"] = ["/usr/bin/env"]
    argv = []
    for token in tokens:
        token = str(token)
        if token.startswith("${") and token.endswith("}"):
            argv += [str(x) for x in (macros.get(token[2:-1]) or [])]
        else:
            argv.append(token)
    return argv, (json_file if "${args_json_file}" in tokens else None)


class ProgramRuns(Isolation):
    stop_signal = signal.SIGTERM  # what the CLI sends first

    def __init__(self, spec, reporter):
        super().__init__(spec, reporter)
        self._warned_python = False

    def start(self, run_id: str, job: dict, env: dict, events_w: int):
        job = {"program": self._spec.program or "", **job, "run_id": run_id}
        sweep_id = env.get("WANDB_SWEEP_ID") or self._spec.sweep_id
        argv, json_file = build(self._spec.command, job, env, sweep_id=sweep_id,
                                wandb_dir=env.get("WANDB_DIR", ""))
        if json_file:
            os.makedirs(os.path.dirname(json_file), exist_ok=True)
            with open(json_file, "w") as f:
                f.write(sweep_vars(job.get("args") or {})["args_json"][0])
        env.pop("WANDB_SERVICE", None)
        env[CHILD_VAR] = json.dumps({"fd": events_w, "lifeline": self.lifeline_r, "run_id": run_id,
                                     "metric": self._spec.metric_name, "report_url": self._spec.report_url,
                                     "root": PACKAGE_ROOT})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [INJECT_DIR, env.get("PYTHONPATH")]))
        self._note_interpreter(argv, env)
        print(f"sweep_magic: run {run_id}: {' '.join(argv)}", file=sys.stderr, flush=True)
        proc = subprocess.Popen([sys.executable, "-S", "-c", GUARD, str(os.getpid()), *argv], env=env,
                                stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(events_w, self.lifeline_r))
        proc.stdin.close()  # as the CLI: a program that reads stdin gets EOF, not a hang
        _groups.add(proc.pid)
        child = SpawnedChild(proc)
        child.stderr = StderrTail(proc.stderr)
        child.stderr.start()
        return child

    def failure_text(self, child, code: int) -> str:
        tail = getattr(child, "stderr", None)
        if tail is not None:
            tail.join(2.0)
            if tail.last_line:
                return tail.last_line
        return super().failure_text(child, code)

    def _note_interpreter(self, argv: list[str], env: dict) -> None:
        # ${interpreter} is `python` from PATH, as in the CLI; say so when that is not this Python.
        if self._warned_python or "python" not in argv:
            return
        self._warned_python = True
        import shutil

        found = shutil.which("python", path=env.get("PATH"))
        if found is None:
            print("sweep_magic: ${interpreter} is `python`, which is not on PATH", file=sys.stderr, flush=True)
        elif os.path.realpath(found) != os.path.realpath(sys.executable):
            print(f"sweep_magic: ${{interpreter}} is {found} (as in `wandb agent`), not {sys.executable}",
                  file=sys.stderr, flush=True)


class StderrTail(threading.Thread):
    """Copies a program's stderr to the agent's log and keeps its last non-empty line."""

    def __init__(self, stream):
        super().__init__(name="sweep-magic-stderr", daemon=True)
        self._stream = stream
        self.last_line: str | None = None

    def run(self) -> None:
        pending = b""
        with self._stream:
            while True:
                chunk = self._stream.read1(65536)
                if not chunk:
                    break
                try:
                    os.write(2, chunk)
                except OSError:
                    pass
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()[-4096:]
                self._keep(lines)
        self._keep([pending])

    def _keep(self, lines: list[bytes]) -> None:
        for line in reversed(lines):
            text = line.decode(errors="replace").strip()
            if text:
                self.last_line = text[:500]
                return
