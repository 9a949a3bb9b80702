"""The ``.wandb`` reader against real offline runs written by the installed wandb.

Runs under whatever wandb the interpreter has, so ``.ci/compat`` runs it once per supported
version: the files are written by that version's wandb-core and read with that version's
protobuf classes, the same pairing as on a user's machine.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import time
import zlib

import pytest
from server_helpers import agent_env, start, tail, write_script

from sweep_magic._testing import kill_group, sidecars_of
from sweep_magic.agents.local import wait_until
from sweep_magic.server import results_reader as rr
from sweep_magic.server.results_reader import ResultsReaderError

wandb = pytest.importorskip("wandb")

ROWS = 300  # ~330 bytes a row in the file: three 32 KiB blocks, so a killed run has some on disk
BLOB = "x" * 70000  # a config bigger than two blocks: the run record spans FIRST/MIDDLE/LAST chunks

# One script, four endings.  The killed and live runs wait until wandb-core has put two blocks
# on disk (wandb-core writes whole blocks while a run is alive), so the test never races it.
RUN_SCRIPT = r'''
import glob, os, signal, sys, time
import wandb

kind, rows = sys.argv[1], int(sys.argv[2])

def wait_for_blocks(run, n):
    pattern = os.path.join(os.environ["WANDB_DIR"], "wandb", "*-" + run.id, "run-" + run.id + ".wandb")
    deadline = time.time() + 60
    while time.time() < deadline:
        files = glob.glob(pattern)
        if files and os.path.getsize(files[0]) >= n * 32768:
            return
        time.sleep(0.05)
    sys.exit("the run file never reached %d blocks" % n)

with wandb.init(project="p", config={"lr": 0.1, "blob": os.environ["BLOB"]}) as run:
    for i in range(rows):
        run.log({"loss": 1.0 / (i + 1), "acc": i, "nest": {"a": i}})
    run.summary["best"] = 0.5
    if kind == "fail":
        raise ValueError("boom")
    if kind == "kill":
        wait_for_blocks(run, 2)
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "live":
        wait_for_blocks(run, 2)
        open(os.path.join(os.environ["WANDB_DIR"], "ready"), "w").close()
        go = os.path.join(os.environ["WANDB_DIR"], "go")
        while not os.path.exists(go):
            time.sleep(0.05)
        run.log({"loss": -1.0, "acc": -1, "nest": {"a": -1}})
'''


class Runs:
    """The four offline runs of one wandb version, each in its own WANDB_DIR."""

    def __init__(self, root):
        self.root = root
        self.tag = f"{os.getpid():x}{int(time.time() * 1000) % 100000:x}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.script = write_script(root / "write_run.py", RUN_SCRIPT)

    def dir(self, kind):
        return self.root / kind

    def run_id(self, kind):
        return f"rr{kind}{self.tag}"

    def start(self, kind):
        d = self.dir(kind)
        d.mkdir()
        env = agent_env({"WANDB_MODE": "offline"}, d, WANDB_RUN_ID=self.run_id(kind), BLOB=BLOB)
        self.procs[kind] = start([sys.executable, self.script, kind, str(ROWS)], env, d, self.root / f"{kind}.log")

    def wait(self, kind, timeout=120):
        proc = self.procs[kind]
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            pytest.fail(f"the {kind} run did not end in {timeout} s:\n{tail(self.root / f'{kind}.log')}")
        # wandb-core outlives its owner by ~1.5 s; the file is final once it is gone.
        wait_until(lambda: not sidecars_of(proc.pid), 15)
        return proc.returncode

    def lookup(self, kind, **kw):
        return rr.lookup(self.run_id(kind), [str(self.dir(kind))], **kw)

    def file(self, kind):
        path = rr.find_run_file(self.run_id(kind), [str(self.dir(kind))])
        assert path, f"no run file for the {kind} run:\n{tail(self.root / f'{kind}.log')}"
        return path

    def log(self, kind):
        return tail(self.root / f"{kind}.log")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    r = Runs(tmp_path_factory.mktemp("wandb-runs"))
    started = time.monotonic()
    try:
        for kind in ("ok", "fail", "kill"):
            r.start(kind)
        codes = {kind: r.wait(kind) for kind in ("ok", "fail", "kill")}
    finally:
        for proc in r.procs.values():
            if proc.poll() is None:
                kill_group(proc)
    print(f"\nwandb {wandb.__version__}: three offline runs written in {time.monotonic() - started:.1f} s")
    assert codes["ok"] == 0, r.log("ok")
    assert codes["fail"] == 1, r.log("fail")
    assert codes["kill"] == -9, r.log("kill")
    return r


def _rows_ok(history, n):
    """The first ``n`` rows the script logged, in order, with wandb's own keys alongside."""
    assert len(history) == n
    for i, row in enumerate(history):
        assert row["_step"] == i and row["acc"] == i and row["loss"] == pytest.approx(1.0 / (i + 1))
        assert row["nest.a"] == i  # nested keys flattened the way W&B names history columns
        assert "_timestamp" in row and "_runtime" in row


def test_finished_run(runs):
    found = runs.lookup("ok")
    assert (found.state, found.exit_code) == ("finished", 0)
    assert found.run_id == runs.run_id("ok")
    _rows_ok(found.history, ROWS)
    s = found.summary
    assert s["best"] == 0.5 and s["acc"] == ROWS - 1 and s["loss"] == pytest.approx(1.0 / ROWS)
    assert s["nest"] == {"a": ROWS - 1}  # the summary keeps wandb's nesting, like run.summary
    assert "_wandb" not in s
    # Reading it as a live run changes nothing: the exit record is there.
    assert runs.lookup("ok", live=True).state == "finished"


def test_run_that_raised_is_failed(runs):
    found = runs.lookup("fail")
    assert (found.state, found.exit_code) == ("failed", 1)
    _rows_ok(found.history, ROWS)
    assert found.summary["best"] == 0.5


def test_killed_run_has_no_exit_record(runs):
    # What reaches the disk varies: whole blocks only, or (seen with 0.31) the partial last
    # block too, flushed by wandb-core when its owner died.  Never an exit record.
    live = runs.lookup("kill", live=True)
    assert (live.state, live.exit_code) == ("running", None)
    ended = runs.lookup("kill")
    assert (ended.state, ended.exit_code) == ("crashed", None)
    assert 0 < len(ended.history) <= ROWS
    _rows_ok(ended.history, len(ended.history))  # a prefix of what was logged, nothing invented


def test_live_run_is_read_while_it_writes(tmp_path_factory):
    r = Runs(tmp_path_factory.mktemp("wandb-live"))
    r.start("live")
    try:
        ready = r.dir("live") / "ready"
        if not wait_until(lambda: ready.exists() or r.procs["live"].poll() is not None, 120):
            pytest.fail(f"the live run never got ready:\n{r.log('live')}")
        assert ready.exists(), r.log("live")
        for _ in range(3):  # while wandb-core holds the file open and a partial block in memory
            found = r.lookup("live", live=True)
            assert found.state == "running" and found.exit_code is None
            assert 0 < len(found.history) <= ROWS
            _rows_ok(found.history, len(found.history))
        (r.dir("live") / "go").touch()
        assert r.wait("live") == 0, r.log("live")
    finally:
        if r.procs["live"].poll() is None:
            kill_group(r.procs["live"])
    done = r.lookup("live", live=True)
    assert done.state == "finished" and len(done.history) == ROWS + 1
    assert done.history[-1]["loss"] == -1.0 and done.history[-1]["_step"] == ROWS


def test_every_truncation_reads_a_prefix(runs):
    """A file cut anywhere (what a reader of a live file sees) gives a prefix of the records,
    never an error and never a record that was not written."""
    data = open(runs.file("ok"), "rb").read()
    full = [payload for _, payload in rr.iter_records(data)]
    ends = [end for end, _ in rr.iter_records(data)]
    cuts = set(range(0, 64)) | {len(data) - i for i in range(0, 16)}
    for block_end in range(32768, len(data), 32768):  # across block boundaries
        cuts |= set(range(block_end - 12, block_end + 12))
    for end in ends[:5] + ends[-5:]:  # at and next to record boundaries, FIRST/MIDDLE/LAST included
        cuts |= {end - 1, end, end + 1, end + 7, end + 8}
    rng = random.Random(0)
    cuts |= {rng.randrange(len(data)) for _ in range(200)}
    for cut in sorted(c for c in cuts if 0 <= c <= len(data)):
        got = [payload for _, payload in rr.iter_records(data[:cut])]
        assert got == full[:len(got)], cut
        assert len(got) == sum(1 for e in ends if e <= cut), cut  # every complete record is read
    for cut in sorted(rng.sample(sorted(cuts), 40)):  # and the protobuf layer agrees
        res = rr.parse_run_bytes(data[:cut], "cut", ended=False)
        assert res.state in ("running", "finished")
        _rows_ok(res.history, len(res.history))


def test_incremental_reads_equal_whole_reads(runs, tmp_path):
    """A file read again as it grows (how the controller polls a live run) gives what a fresh read
    of the same bytes gives; a replaced or shrunk file is read from the start."""
    data = open(runs.file("ok"), "rb").read()
    path = tmp_path / "run-grow.wandb"
    path.write_bytes(b"")
    rng = random.Random(1)
    cuts = sorted({rng.randrange(len(data)) for _ in range(25)} | {3, 7, 32768, 32769, len(data)})
    done = 0
    with open(path, "ab") as f:
        for cut in cuts:
            f.write(data[done:cut])
            f.flush()
            done = cut
            got = rr.read_run_file(str(path))
            want = rr.parse_run_bytes(data[:cut], str(path))
            assert (got.history, got.summary, got.exit_code, got.records, got.bytes_read) == (
                want.history, want.summary, want.exit_code, want.records, want.bytes_read), cut
    got.history[0]["loss"] = "changed by the caller"  # results are copies: the cache is not touched
    assert rr.read_run_file(str(path)).history[0]["loss"] == 1.0
    path.write_bytes(data[:40000])  # truncated in place: shorter than what was read
    assert rr.read_run_file(str(path)).records == rr.parse_run_bytes(data[:40000]).records
    other = tmp_path / "other.wandb"  # a different file (inode) under the same name
    other.write_bytes(open(runs.file("fail"), "rb").read())
    os.replace(other, path)
    again = rr.read_run_file(str(path), ended=True)
    assert again.state == "failed" and again.run_id == runs.run_id("fail") and len(again.history) == ROWS


def test_damage_before_the_end_is_an_error(runs, tmp_path):
    data = bytearray(open(runs.file("ok"), "rb").read())
    bad = bytearray(data)
    bad[100] ^= 0xFF  # inside the first block's records
    with pytest.raises(ResultsReaderError, match="checksum|chunk"):
        rr.parse_run_bytes(bytes(bad), "bad")
    bad = bytearray(data)
    bad[6] = 1  # format version 1: not ours to guess at
    with pytest.raises(ResultsReaderError, match="known format"):
        rr.parse_run_bytes(bytes(bad), "bad")
    with pytest.raises(ResultsReaderError, match="known format"):
        rr.parse_run_bytes(b"PK\x03\x04 not a run file at all", "zip")
    # The file on disk: damage reaches lookup as an error, never as "no result".
    d = tmp_path / "wandb" / f"offline-run-x-{runs.run_id('ok')}"
    d.mkdir(parents=True)
    bad = bytearray(data)
    bad[40000] ^= 0x01
    (d / f"run-{runs.run_id('ok')}.wandb").write_bytes(bytes(bad))
    with pytest.raises(ResultsReaderError):
        rr.lookup(runs.run_id("ok"), [str(tmp_path)])


def _frame(*payloads: bytes) -> bytes:
    """A minimal writer of the same framing, for records the real client cannot be made to write."""
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for p in payloads:
        assert len(p) + 7 <= 32768 - len(out) % 32768
        out += struct.pack("<IHB", zlib.crc32(p, zlib.crc32(b"\x01")), len(p), 1) + p
    return bytes(out)


def test_unparseable_record_is_an_error():
    with pytest.raises(ResultsReaderError, match="cannot parse"):
        rr.parse_run_bytes(_frame(b"\xff\xff\xff\xff\xff\xff"), "junk")


def test_wrong_run_and_unreadable_file(runs, tmp_path):
    other = tmp_path / "wandb" / "offline-run-x-someoneelse"
    other.mkdir(parents=True)
    with open(runs.file("ok"), "rb") as f:
        (other / "run-someoneelse.wandb").write_bytes(f.read())
    with pytest.raises(ResultsReaderError, match="belongs to run"):
        rr.lookup("someoneelse", [str(tmp_path)])
    (tmp_path / "wandb" / "offline-run-x-adir").mkdir()
    (tmp_path / "wandb" / "offline-run-x-adir" / "run-adir.wandb").mkdir()  # not a file
    with pytest.raises(ResultsReaderError, match="cannot read"):
        rr.lookup("adir", [str(tmp_path)])
    assert rr.lookup("nosuchrun", [str(tmp_path)]) is None
    # A file just created, before wandb-core wrote its header: a run that has not logged yet.
    (tmp_path / "wandb" / "offline-run-x-fresh").mkdir()
    (tmp_path / "wandb" / "offline-run-x-fresh" / "run-fresh.wandb").write_bytes(b":W&")
    fresh = rr.lookup("fresh", [str(tmp_path)], live=True)
    assert fresh.state == "running" and fresh.history == [] and fresh.records == 0


def test_typed_history_values_and_incomplete_exit():
    """Fields newer writers may use: typed history values (0.31 ``HistoryItem.value`` oneof) and
    an exit record marked ``not_complete`` (0.28+), which does not end the run."""
    from wandb.proto import wandb_internal_pb2 as pb

    rec = pb.Record()
    item = rec.history.item.add()
    item.nested_key.append("loss")
    if "value" in pb.HistoryItem.DESCRIPTOR.oneofs_by_name:
        item.number = 0.25
    else:
        item.value_json = "0.25"
    flag = pb.Record()
    flag.summary.update.add(key="best", value_json="NaN")
    payloads = [rec.SerializeToString(), flag.SerializeToString()]
    if "not_complete" in pb.RunExitRecord.DESCRIPTOR.fields_by_name:
        ex = pb.Record()
        ex.exit.exit_code = 0
        ex.exit.not_complete = True
        payloads.append(ex.SerializeToString())
    res = rr.parse_run_bytes(_frame(*payloads), "synthetic", ended=False)
    assert res.history == [{"loss": 0.25}] and res.summary["best"] != res.summary["best"]  # NaN
    assert res.state == "running" and res.exit_code is None


def test_same_records_as_wandbs_own_reader(runs):
    """Where wandb still ships its Python reader (up to 0.29), it reads the same records; from
    0.30 on it ships none (the reason this reader exists), which is checked instead."""
    import importlib

    import wandb

    try:
        datastore = importlib.import_module("wandb.sdk.internal.datastore")
    except ImportError:
        minor = tuple(int(p) for p in wandb.__version__.split(".")[:2])
        assert minor >= (0, 30), f"wandb {wandb.__version__} should still ship its DataStore"
        return
    for kind in ("ok", "fail", "kill"):
        ds = datastore.DataStore()
        ds.open_for_scan(runs.file(kind))
        theirs = []
        while (payload := ds.scan_data()) is not None:
            theirs.append(payload)
        ds.close()
        ours = [payload for _, payload in rr.iter_records(open(runs.file(kind), "rb").read())]
        assert ours == theirs, kind
