"""Results of runs nobody reported: find the offline run's ``.wandb`` file and read it.

Used for ``wandb agent`` CLI runs and plain ``wandb.agent`` workers, where sweep_magic
cannot hook the run.  The ``.wandb`` file is wandb's transaction log: a 7-byte header, then
LevelDB-log framing (32 KiB blocks of CRC-checked chunks), each record a protobuf
``wandb_internal_pb2.Record``.

Why we frame the file ourselves instead of asking wandb to read it (measured, see
docs/wandb-versions.md):

* ``wandb-core leet inspect --json`` works only from 0.31: it exits 1 in 0.25-0.29
  (no ``inspect`` in 0.25 and 0.28) and opens a terminal UI in 0.30 ("could not open TTY");
  the old reader took every such failure for "never started", and the point was re-issued.
* wandb's Python reader (``wandb/sdk/internal/datastore.py: DataStore``) exists in 0.25-0.29
  and is gone from 0.30; it also opens the file read-write, checks with ``assert`` (gone under
  ``python -O``) and fails on the torn tail of a file that is still being written.
* The framing is the same in every version checked (0.25-0.31) and the same as that Python
  reader's constants: header version 0, chunk CRC = zlib CRC-32 seeded with the chunk type.
  ``wandb sync`` must read files written by older releases, so wandb cannot change it without
  bumping that version byte, which we check.  The records are parsed with the installed
  wandb's own protobuf class; fields newer than 0.25 are used only where they exist.

Reading is tolerant at the end of the file only: wandb-core appends whole 32 KiB blocks while
a run is alive and the last, partial block at close (or, sometimes, when its owner dies), so a
file may end in the middle of a chunk; we stop at the last complete record.  Anything wrong
*before* the end (bad CRC, bad chunk order, bad padding, unparseable record) raises
``ResultsReaderError``: a result is complete and correct, or there is none.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import logging
import os
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class ResultsReaderError(RuntimeError):
    """A run file exists but cannot be read correctly (corrupt, unknown format, wrong run)."""


# =============================================================================================
# wandb-private surface.  Everything this module knows about wandb's internals is here, so it
# can move into the wandb adapter as one piece.  Checked against 0.25.1, 0.28.2 and 0.31.0.
# =============================================================================================

# The on-disk format (wandb/sdk/internal/datastore.py in <= 0.29; wandb-core's store in Go).
_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)  # ident, magic, format version 0
_HEADER_LEN = 7
_BLOCK = 32768
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, chunk type; little-endian
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
# Chunk CRC: zlib CRC-32 of the data, seeded with the CRC-32 of the type byte.
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}

_record_class = None
_record_lock = threading.Lock()


def _Record():
    """``wandb.proto.wandb_internal_pb2.Record`` (imported late: ``import wandb`` costs ~0.7 s).

    That module picks the generated code matching the installed protobuf major (v4..v7)."""
    global _record_class
    with _record_lock:
        if _record_class is None:
            try:
                from wandb.proto.wandb_internal_pb2 import Record
            except Exception as err:  # ImportError, or wandb's own "unsupported protobuf"
                raise ResultsReaderError(f"cannot import wandb's Record protobuf: {err}") from err
            _record_class = Record
        return _record_class


def _item_key(item) -> list[str]:
    """A history/summary item's key path: ``key`` (older writers) or ``nested_key`` (wandb-core
    writes even top-level names as a one-element ``nested_key``)."""
    return [item.key] if item.key else list(item.nested_key)


def _item_value(item):
    """The item's value: ``value_json`` in every version; 0.31 added typed fields (oneof
    ``value``: none/boolean/integer/number/text/json) that a writer may use instead."""
    if item.value_json:
        return json.loads(item.value_json)  # wandb writes NaN/Infinity, which json accepts
    oneof = item.DESCRIPTOR.oneofs_by_name.get("value")
    which = item.WhichOneof("value") if oneof is not None else None
    if which is None or which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    return getattr(item, which)


def _exit_is_final(exit_record) -> bool:
    """An exit record ends the run unless ``not_complete`` (0.28+, wandb PR #11734: a shared-mode
    writer that finished without marking the run finished) is set."""
    return not getattr(exit_record, "not_complete", False)


def _decode(payload: bytes):
    """One record as plain data: ``("history", {key: value})``, ``("summary", (updates, removes))``
    with ``[(key_path, value)]`` and ``[key_path]``, ``("exit", exit_code)`` (only a final exit),
    ``("run", (run_id, sweep_id))``, or ``(None, None)`` for every other record type."""
    record = _Record()()
    record.ParseFromString(payload)
    kind = record.WhichOneof("record_type")
    if kind == "history":
        return kind, {".".join(_item_key(item)): _item_value(item) for item in record.history.item}
    if kind == "summary":
        updates = [(_item_key(item), _item_value(item)) for item in record.summary.update]
        return kind, (updates, [_item_key(item) for item in record.summary.remove])
    if kind == "exit":
        return (kind, int(record.exit.exit_code)) if _exit_is_final(record.exit) else (None, None)
    if kind == "run":
        return kind, (record.run.run_id or None, record.run.sweep_id or None)
    return None, None

# ============================================ end of the wandb-private surface ===============


@dataclass
class RunFileResult:
    """What a run file says.

    ``exit_code`` is None while there is no (final) exit record.  Such a run is ``running``
    while its writer may be alive and ``crashed`` once the caller knows it has stopped
    (``ended``, set by ``lookup(live=False)``): wandb writes the exit record at finish, so a
    process killed mid-run never writes one."""

    path: str
    history: list[dict] = field(default_factory=list)  # rows in order, nested keys joined by "."
    summary: dict = field(default_factory=dict)  # wandb's summary, nested dicts kept, no "_wandb"
    exit_code: int | None = None
    run_id: str | None = None
    sweep_id: str | None = None
    ended: bool = False
    records: int = 0
    bytes_read: int = 0  # the end of the last complete record; the rest is a torn tail

    @property
    def state(self) -> str:
        if self.exit_code is None:
            return "crashed" if self.ended else "running"
        return "finished" if self.exit_code == 0 else "failed"


def find_run_file(run_id: str, dirs: list[str]) -> str | None:
    """The newest ``run-<id>.wandb`` under ``<dir>/wandb/*-<id>/`` (or ``<dir>/*-<id>/``)."""
    found: list[str] = []
    for base in dirs:
        if not base:
            continue
        root = glob.escape(base)  # a user's folder name may contain glob characters
        found += glob.glob(os.path.join(root, "wandb", f"*-{run_id}", f"run-{run_id}.wandb"))
        found += glob.glob(os.path.join(root, f"*-{run_id}", f"run-{run_id}.wandb"))
    if not found:
        return None
    return max(found, key=lambda p: os.stat(p).st_mtime)


def iter_records(data: bytes, base: int = 0):
    """Yield ``(end_offset, payload)`` for each complete record in ``data``, the bytes of a
    ``.wandb`` file from offset ``base`` on (0: the whole file; else the end of a record read
    before, so an incremental read continues where the last one stopped).

    Stops quietly at a torn tail (a chunk or a multi-chunk record cut off by the end of the
    data); raises ``ResultsReaderError`` for damage anywhere else."""
    size = base + len(data)
    if base == 0:
        if len(data) < _HEADER_LEN:
            return  # created, header not written yet
        if data[:_HEADER_LEN] != _HEADER:
            ident, magic, version = struct.unpack("<4sHB", data[:_HEADER_LEN])
            raise ResultsReaderError(
                f"not a .wandb file of a known format (ident={ident!r}, magic={magic:#x}, version={version})")
        pos = _HEADER_LEN
    elif base < _HEADER_LEN:
        raise ValueError("base must be 0 or the end of a record")
    else:
        pos = base
    # Offsets are absolute (blocks are 32 KiB from the start of the file); data[pos - base].
    pending: list[bytes] | None = None  # the chunks of a FIRST..LAST record so far
    while True:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:  # a block's last bytes, too few for a chunk: zero padding
            pad = data[pos - base:pos - base + left]
            if pad.strip(b"\0"):
                raise ResultsReaderError(f"non-zero block padding at offset {pos}")
            pos += left
            continue
        if pos + _CHUNK_HEADER.size > size:
            return  # end of data (or a torn chunk header)
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos - base)
        end = pos + _CHUNK_HEADER.size + length
        if end > size:
            return  # torn chunk: the writer has not finished it (or never will)
        if kind not in _TYPE_CRC or length > left - _CHUNK_HEADER.size:
            if kind == 0 and length == 0 and crc == 0 and not data[pos - base:].strip(b"\0"):
                return  # zeros to the end: space allocated, not yet written
            raise ResultsReaderError(f"bad chunk (type {kind}, length {length}) at offset {pos}")
        payload = data[pos - base + _CHUNK_HEADER.size:end - base]
        if zlib.crc32(payload, _TYPE_CRC[kind]) != crc:
            if end == size:
                return  # the very last chunk, torn while we read it
            raise ResultsReaderError(f"chunk checksum mismatch at offset {pos}")
        pos = end
        if kind == _FULL:
            if pending is not None:
                raise ResultsReaderError(f"record interrupted by a FULL chunk at offset {pos}")
            yield pos, payload
        elif kind == _FIRST:
            if pending is not None:
                raise ResultsReaderError(f"record interrupted by a FIRST chunk at offset {pos}")
            pending = [payload]
        else:
            if pending is None:
                raise ResultsReaderError(f"chunk type {kind} without a FIRST chunk at offset {pos}")
            pending.append(payload)
            if kind == _LAST:
                yield pos, b"".join(pending)
                pending = None


def _set_nested(target: dict, path: list[str], value) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[path[-1]] = value


def _del_nested(target: dict, path: list[str]) -> None:
    for part in path[:-1]:
        target = target.get(part)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def _parse_into(result: RunFileResult, data: bytes, base: int) -> None:
    """Apply the complete records in ``data`` (file bytes from ``base`` on) to ``result``."""
    for end, payload in iter_records(data, base):
        try:
            kind, value = _decode(payload)
        except ResultsReaderError:
            raise
        except Exception as err:  # protobuf's DecodeError (not a ValueError in protobuf 7), bad JSON
            raise ResultsReaderError(
                f"cannot parse the record ending at offset {end} of {result.path}: {err}") from err
        if kind == "history":
            result.history.append(value)
        elif kind == "summary":
            updates, removes = value
            for key_path, item in updates:
                _set_nested(result.summary, key_path, item)
            for key_path in removes:
                _del_nested(result.summary, key_path)
        elif kind == "exit":
            result.exit_code = value
        elif kind == "run":
            result.run_id = value[0] or result.run_id
            result.sweep_id = value[1] or result.sweep_id
        result.records += 1
        result.bytes_read = end


def _finish(acc: RunFileResult, *, run_id: str | None, ended: bool) -> RunFileResult:
    """A copy for the caller (the accumulator stays private to the cache)."""
    summary = copy.deepcopy(acc.summary)
    summary.pop("_wandb", None)  # wandb's bookkeeping (runtime), not the user's
    result = dataclasses.replace(acc, history=[dict(row) for row in acc.history], summary=summary, ended=ended)
    if run_id is not None and result.run_id is not None and result.run_id != run_id:
        raise ResultsReaderError(f"{result.path} belongs to run {result.run_id!r}, not {run_id!r}")
    return result


def parse_run_bytes(data: bytes, path: str = "", *, run_id: str | None = None, ended: bool = False) -> RunFileResult:
    """Parse a whole ``.wandb`` file's bytes (see ``read_run_file``)."""
    acc = RunFileResult(path=path)
    _parse_into(acc, data, 0)
    return _finish(acc, run_id=run_id, ended=ended)


# Live reading is incremental: the controller re-reads every running run's file every 2 s for
# hyperband, and a long run's file holds ~3 records per logged step (~11 us each to parse), so
# each read continues from the end of the last complete record it saw.  One lock for all reads:
# they are short, and an accumulator must never be advanced by two threads at once.
_CACHE_MAX = 256
_cache: OrderedDict[str, tuple[tuple[int, int], RunFileResult]] = OrderedDict()
_cache_lock = threading.Lock()


def read_run_file(path: str, *, run_id: str | None = None, ended: bool = False, keep: bool = True) -> RunFileResult:
    """History rows (in order), merged summary and exit code of one ``.wandb`` file.

    ``run_id``: check the file's run record names this run.  ``ended``: the caller knows the
    writer has stopped, so a missing exit record means ``crashed`` rather than ``running``.
    ``keep``: remember how far the file was read, so the next read of it parses only what was
    appended (``False`` for a last read: the entry is dropped).
    Raises ``ResultsReaderError`` when the file cannot be read or is damaged."""
    path = os.path.abspath(path)
    with _cache_lock:
        try:
            with open(path, "rb") as f:  # read-only: the writer may still be appending
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                cached = _cache.pop(path, None)
                if cached is not None and cached[0] == ident and st.st_size >= cached[1].bytes_read:
                    acc = cached[1]
                else:  # new, or replaced/truncated: start over
                    acc = RunFileResult(path=path)
                f.seek(acc.bytes_read)
                data = f.read()
        except OSError as err:
            raise ResultsReaderError(f"cannot read run file {path}: {err}") from err
        _parse_into(acc, data, acc.bytes_read)  # on an error the entry stays dropped
        if keep:
            _cache[path] = (ident, acc)
            while len(_cache) > _CACHE_MAX:
                _cache.popitem(last=False)
        return _finish(acc, run_id=run_id, ended=ended)


def lookup(run_id: str, dirs: list[str], *, live: bool = False) -> RunFileResult | None:
    """Find and read a run's file.

    Returns ``None`` only when no run file exists.  A file that exists but cannot be read raises
    ``ResultsReaderError`` (never a guess: the caller must not take it for "never started").
    ``live``: the run may still be writing, so a missing exit record means ``running``;
    otherwise the caller says the run is over and a missing exit record means ``crashed``
    (and the file's read position is forgotten: it is not read again)."""
    path = find_run_file(run_id, dirs)
    if path is None:
        return None
    return read_run_file(path, run_id=run_id, ended=not live, keep=live)
