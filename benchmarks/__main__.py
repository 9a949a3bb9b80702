"""``python -m benchmarks [--quick] [--out DIR] [--only NAME,...]``: every benchmark, one run.

Writes ``results.json`` and ``results.md`` into ``--out`` (default ``benchmarks/results/``).
Exits 1 when a benchmark crashed, 2 when a process of the run outlived it (both are still
written up); figures are never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

from benchmarks import BENCHMARKS
from benchmarks._common import REPO, Bench, machine
from benchmarks.report import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small K/T: a smoke check (< 3 min on 2 cores)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"), help="folder for results.*")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")

    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    bench = Bench(quick=args.quick, log=log)
    out = {
        "mode": "quick" if args.quick else "full",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "benchmarks": {},
        "errors": {},
    }
    try:
        for name in chosen:
            module = BENCHMARKS[name]
            t0 = time.time()
            log(f"== {name}")
            try:
                out["benchmarks"][name] = module.run(bench)
            except BaseException as err:
                out["errors"][name] = "".join(traceback.format_exception(err))
                log(f"{name} crashed:\n{out['errors'][name]}")
                if isinstance(err, KeyboardInterrupt):
                    break
            finally:
                out.setdefault("seconds", {})[name] = round(time.time() - t0, 1)
                _stop_sessions(log)
    finally:
        out["leftover_processes"] = bench.close()
    try:
        out["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    out["total_seconds"] = round(time.time() - started, 1)
    errors = {k: v for k, v in out["errors"].items()}
    # A benchmark that returned but could not finish its sweep counts as a crash too.
    for name, result in out["benchmarks"].items():
        found = list(_nested_errors(result))
        if found:
            errors.setdefault(name, "\n".join(found))
    out["errors"] = errors

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(out, f, indent=2, sort_keys=False)
        f.write("\n")
    markdown = render(out)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    log(f"wrote {args.out}/results.json and results.md")
    if out["leftover_processes"]:
        log(f"processes outlived the run (killed now): {out['leftover_processes']}")
    if errors:
        log(f"benchmarks with errors: {sorted(errors)}")
        return 1
    return 2 if out["leftover_processes"] else 0


def _nested_errors(value, path: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "error" and item:
                yield f"{path}: {str(item).splitlines()[0]}"
            else:
                yield from _nested_errors(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nested_errors(item, f"{path}[{i}]")


def _stop_sessions(log) -> None:
    """Between benchmarks: no session of a finished (or crashed) benchmark keeps running."""
    try:
        import sweep_magic

        for session in sweep_magic.sessions():
            if not session.done:
                log(f"stopping leftover session {session.id}")
                session.stop()
    except Exception as err:
        log(f"could not stop sessions: {err!r}")


if __name__ == "__main__":
    sys.exit(main())
