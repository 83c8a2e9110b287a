"""The PSI rounds: prepare the input, exchange masked points, match, and build the aligned output.

Rounds (what travels, per direction; see `crypto.py` for the maths and what each side learns):

    0  hello   JSON {version, task, party, config digest, number of distinct keys}
    1  r1      s·H(k) for this party's distinct keys, in a random order, 32 KiB..1 MiB messages
    2  r2      the peer's r1 points masked again, in the order received -- only sent to a receiver
    3  r3      per matched key, this party's row count -- only with duplicates=keep-all and two receivers
    4  fin     empty; both wait for the other's before committing output, so a party that dies at any
               point before the end leaves no output anywhere

Everything is streamed and pipelined: the sender thread masks and sends our r1 while the main thread
masks the peer's r1 as it arrives and sends it straight back as r2, so both rounds overlap and the
worker pool stays busy.  At most `MAX_INFLIGHT` messages per stream are being masked at once.

Memory per party, for n rows of which u are distinct keys and a peer with v distinct keys: the input
table in Arrow form (its own size, read once), 32 bytes per row for the row hashes while deduplicating,
then 32·u for our points, 8·n for the row -> key mapping, and on a receiver 32·(u + v) for the
doubly-masked values; about 200 MB of points and indices for 1M x 1M, never one Python object per row
(per batch at most).  Deduplication, shuffling, matching and ordering are pyarrow kernels over
fixed-size binary arrays.

Output order: matched rows sorted by their doubly-masked value a·b·H(k), which both parties compute
identically, ties in input order (`sort_indices` is stable).  With keep-all and two receivers each
matched key becomes the product of both sides' rows: the first party (by sorted name) repeats each of
its rows `peer count` times, the second tiles its rows `peer count` times, so position i pairs the same
two rows at both parties.
"""

from __future__ import annotations

import array
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from accord.engines.psi.config import MATCH_COLUMN, PROTOCOL_VERSION, PsiConfig
from accord.engines.psi.crypto import POINT_SIZE, hash_multi_keys, hash_prefix, hash_single_keys
from accord.engines.psi.errors import InputError, ProtocolMismatch, PsiError
from accord.engines.psi.inputs import repeated_keys
from accord.engines.psi.io import TableReader
from accord.engines.psi.transport import PeerChannel
from accord.engines.psi.workers import Masker

log = logging.getLogger("accord.engines.psi")

MESSAGE_POINTS = 32768  # 1 MiB per HTTP request: under the 2 MB body limit of common middleboxes
MAX_INFLIGHT = 4

Progress = Callable[[float, str], None]


def points_array(data: bytes | bytearray) -> Any:
    """A fixed_size_binary(32) array over `data` (no copy)."""
    return pa.Array.from_buffers(pa.binary(POINT_SIZE), len(data) // POINT_SIZE, [None, pa.py_buffer(data)])


def points_bytes(points: Any) -> bytes:
    """The bytes of a fixed_size_binary(32) array without nulls."""
    start = points.offset * POINT_SIZE
    return bytes(points.buffers()[1].to_pybytes()[start : start + len(points) * POINT_SIZE])


def _int64(values: array.array[int]) -> Any:
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values.tobytes())])


def _to_array(values: Any) -> array.array[int]:
    """An int64 pyarrow array without nulls as a compact `array('q')`."""
    out = array.array("q")
    start = values.offset * 8
    out.frombytes(values.buffers()[1].to_pybytes()[start : start + len(values) * 8])
    return out


def _key_text(column: Any, party: str, name: str) -> Any:
    if pa.types.is_string(column.type):
        return column
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"inputs.{party}: key column {name!r} of type {column.type} has no text form"
        ) from exc


@dataclass
class PreparedInput:
    """This party's table and its distinct keys, hashed and shuffled, ready for round 1."""

    table: Any  # pyarrow.Table: every column, rows in input order (after keep-first)
    row_sid: Any  # int64 per row: the row's key as an index into send order; null = null key
    send_points: bytes  # H(k) of the distinct keys in send order (a random permutation)
    rows_read: int
    rows_null_key: int
    rows_dropped: int
    unique_keys: int


def prepare_input(
    reader: TableReader,
    keys: Sequence[str],
    *,
    party: str,
    task_id: str,
    duplicates: str,
    batch_rows: int,
) -> PreparedInput:
    """Read the table once, hash its keys, deduplicate, and shuffle (no network involved)."""
    schema = reader.schema()
    prefix = hash_prefix(task_id)
    batches: list[Any] = []
    hashes = bytearray()
    null_rows = array.array("q")
    rows = 0
    for batch in reader.iter_batches(None, batch_rows):
        key_columns = [_key_text(batch.column(name), party, name) for name in keys]
        if any(col.null_count for col in key_columns):
            valid = key_columns[0].is_valid()
            for col in key_columns[1:]:
                valid = pc.and_(valid, col.is_valid())
            null_rows.extend(rows + int(i) for i in pc.indices_nonzero(pc.invert(valid)).to_pylist())
            key_columns = [col.filter(valid) for col in key_columns]
        if len(key_columns) == 1:
            hashes += hash_single_keys(prefix, key_columns[0].to_pylist())
        else:
            hashes += hash_multi_keys(prefix, [col.to_pylist() for col in key_columns])
        batches.append(batch)
        rows += batch.num_rows
    table = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()

    encoded = points_array(hashes).dictionary_encode()
    del hashes  # the dictionary holds the distinct hashes; the row hashes are no longer needed
    distinct = encoded.dictionary
    row_uid = encoded.indices.cast(pa.int64())
    if null_rows:
        row_uid = _with_nulls(row_uid, rows, null_rows)
    valid_rows = rows - len(null_rows)
    unique = len(distinct)
    dropped = 0
    if unique < valid_rows:
        repeated = valid_rows - unique
        if duplicates == "error":
            raise repeated_keys(party, keys, repeated, valid_rows)
        if duplicates == "keep-first":
            keep = _first_occurrences(row_uid)
            table = table.filter(keep)
            row_uid = row_uid.filter(keep)
            dropped = repeated

    # A random order for sending: sort random 64-bit tags.  inverse[uid] = position in send order.
    tags = pa.Array.from_buffers(pa.uint64(), unique, [None, pa.py_buffer(os.urandom(8 * unique))])
    order = pc.sort_indices(tags)
    send_points = points_bytes(distinct.take(order)) if unique else b""
    inverse = pc.sort_indices(order)
    row_sid = inverse.take(row_uid).cast(pa.int64()) if unique else row_uid
    return PreparedInput(
        table=table,
        row_sid=row_sid,
        send_points=send_points,
        rows_read=rows,
        rows_null_key=len(null_rows),
        rows_dropped=dropped,
        unique_keys=unique,
    )


def _with_nulls(values: Any, rows: int, null_rows: array.array[int]) -> Any:
    """Spread `values` (one per non-null row) over `rows` positions, null at `null_rows`."""
    out = array.array("q", [-1]) * rows
    is_null = bytearray(rows)
    for row in null_rows:
        is_null[row] = 1
    source = iter(values.to_pylist())
    for row in range(rows):
        if not is_null[row]:
            out[row] = next(source)
    full = _int64(out)
    return pc.if_else(pc.equal(full, -1), pa.scalar(None, pa.int64()), full)


def _first_occurrences(row_uid: Any) -> Any:
    """True for the first row of each key (dictionary ids appear in order of first occurrence) and
    for null-key rows (they are not duplicates of anything)."""
    filled = pc.fill_null(row_uid, -1)
    running = pc.cumulative_max(filled)
    previous = pa.concat_arrays([pa.array([-1], pa.int64()), running.slice(0, max(0, len(running) - 1))])
    return pc.or_(pc.greater(filled, previous), pc.is_null(row_uid))


@dataclass
class Matching:
    """A receiver's view of the intersection."""

    row_matched: Any  # bool per row
    ordered_rows: Any  # int64: matched rows, sorted by doubly-masked key, ties in input order
    group_counts: array.array[int]  # rows per matched key, in the same order
    intersection_keys: int


def match(prepared: PreparedInput, own_double: bytes | bytearray, peer_double: bytes | bytearray) -> Matching:
    """Which of our rows have a key in the intersection, in the order both parties agree on."""
    ours = points_array(own_double)
    member = pc.is_in(ours, value_set=points_array(peer_double))
    row_matched = pc.fill_null(member.take(prepared.row_sid), False)
    matched_rows = pc.indices_nonzero(row_matched).cast(pa.int64())
    matched_sid = prepared.row_sid.take(matched_rows)
    order = pc.sort_indices(ours.take(matched_sid))
    ordered_rows = matched_rows.take(order)
    counts = array.array("q")
    if len(ordered_rows):
        runs = pc.run_end_encode(matched_sid.take(order)).run_ends.cast(pa.int64()).to_pylist()
        counts.extend(b - a for a, b in zip([0, *runs[:-1]], runs, strict=True))
    return Matching(
        row_matched=row_matched,
        ordered_rows=ordered_rows,
        group_counts=counts,
        intersection_keys=int(pc.sum(member).as_py() or 0),
    )


def expand(matching: Matching, peer_counts: Sequence[int], *, first: bool) -> Any:
    """The matched rows as the SQL join's row order (Cartesian product per key), see module doc."""
    rows = _to_array(matching.ordered_rows)
    out = array.array("q")
    start = 0
    for own, peer in zip(matching.group_counts, peer_counts, strict=True):
        group = rows[start : start + own]
        start += own
        if first:
            for row in group:
                out.extend(array.array("q", [row]) * peer)
        else:
            out.extend(group * peer)
    return _int64(out)


def output_table(prepared: PreparedInput, matched_rows: Any, matching: Matching, join: str) -> Any:
    """Our own rows in output order; for a left join the unmatched rows follow, with a flag column."""
    if join == "inner":
        return prepared.table.take(matched_rows)
    if MATCH_COLUMN in prepared.table.column_names:
        raise InputError(f"the input already has a column named {MATCH_COLUMN!r}, which a left join adds")
    unmatched = pc.indices_nonzero(pc.invert(matching.row_matched)).cast(pa.int64())
    rows = pa.concat_arrays([matched_rows, unmatched])
    flags = pa.concat_arrays(
        [pa.repeat(pa.scalar(True), len(matched_rows)), pa.repeat(pa.scalar(False), len(unmatched))]
    )
    return prepared.table.take(rows).append_column(MATCH_COLUMN, flags)


def _pack_counts(counts: Sequence[int]) -> bytes:
    packed = array.array("I", counts)
    if sys.byteorder == "big":  # pragma: no cover - the wire is little-endian
        packed.byteswap()
    return packed.tobytes()


def _unpack_counts(data: bytes) -> array.array[int]:
    if len(data) % 4:
        raise ProtocolMismatch("the peer's group counts are malformed")
    packed = array.array("I")
    packed.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        packed.byteswap()
    return packed


@dataclass
class SessionResult:
    peer_unique_keys: int
    output: Any | None  # pyarrow.Table for a receiver, None otherwise
    intersection_keys: int | None
    intersection_rows: int | None
    timings: dict[str, float] = field(default_factory=dict)


class PsiSession:
    """Runs rounds 0-3 with the peer over `channel`; round 4 (fin) is `finish()`, after the output
    has been staged, so that a failure while writing still aborts both sides."""

    def __init__(
        self,
        *,
        config: PsiConfig,
        party: str,
        peer: str,
        prepared: PreparedInput,
        channel: PeerChannel,
        masker: Masker,
        progress: Progress,
    ) -> None:
        self.config = config
        self.party = party
        self.peer = peer
        self.prepared = prepared
        self.channel = channel
        self.masker = masker
        self.progress = progress
        self.self_receives = party in config.receiver_set
        self.peer_receives = peer in config.receiver_set
        self.first = config.parties[0] == party
        self._stop = threading.Event()
        self._masked_own = 0
        self._masked_peer = 0
        self._peer_unique = 0

    def run(self) -> SessionResult:
        timings: dict[str, float] = {}
        started = time.monotonic()
        self._peer_unique = self._hello()
        timings["handshake_s"] = time.monotonic() - started
        own_double, peer_double = self._exchange()
        timings["exchange_s"] = time.monotonic() - started - timings["handshake_s"]
        if not self.self_receives:
            return SessionResult(self._peer_unique, None, None, None, timings)
        assert own_double is not None and peer_double is not None
        self.channel.round = 3
        matching = match(self.prepared, own_double, peer_double)
        rows = matching.ordered_rows
        if self.config.duplicates == "keep-all" and self.peer_receives:
            peer_counts = self._exchange_counts(matching.group_counts)
            rows = expand(matching, peer_counts, first=self.first)
        output = output_table(self.prepared, rows, matching, self.config.join)
        timings["match_s"] = time.monotonic() - started - sum(timings.values())
        return SessionResult(
            peer_unique_keys=self._peer_unique,
            output=output,
            intersection_keys=matching.intersection_keys,
            intersection_rows=len(matching.ordered_rows),
            timings=timings,
        )

    def finish(self) -> None:
        """Round 4: tell the peer we are done and wait until it is too."""
        self.channel.round = 4
        self.channel.send("fin", 0, b"", True)
        self.channel.recv("fin", 0)
        self.channel.flush()

    def stop(self) -> None:
        self._stop.set()

    # -- rounds ----------------------------------------------------------------------------------

    def _hello(self) -> int:
        self.channel.round = 0
        hello = {
            "version": PROTOCOL_VERSION,
            "task": self.channel.task_id,
            "party": self.party,
            "digest": self.config.digest(),
            "unique": self.prepared.unique_keys,
        }
        self.channel.send("hello", 0, json.dumps(hello).encode(), True)
        payload, _ = self.channel.recv("hello", 0)
        try:
            theirs = json.loads(payload)
            version, party, digest = theirs["version"], theirs["party"], theirs["digest"]
            unique = int(theirs["unique"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolMismatch(f"peer {self.peer} sent a malformed handshake") from exc
        if version != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"peer {self.peer} speaks PSI protocol version {version}, this engine {PROTOCOL_VERSION}"
            )
        if party != self.peer:
            raise ProtocolMismatch(f"expected peer {self.peer}, but {party!r} answered")
        if digest != self.config.digest():
            raise ProtocolMismatch(
                f"peer {self.peer} runs this task with a different configuration (protocol, receivers, "
                "join, duplicates or the number of key columns differ)"
            )
        if unique < 0:
            raise ProtocolMismatch(f"peer {self.peer} announced {unique} keys")
        log.info(
            "%s: handshake with %s done: %d distinct keys here, %d there",
            self.party,
            self.peer,
            self.prepared.unique_keys,
            unique,
        )
        return unique

    def _report(self) -> None:
        total = self.prepared.unique_keys + self._peer_unique
        if total:
            done = (self._masked_own + self._masked_peer) / total
            self.progress(0.1 + 0.8 * done, f"masked {self._masked_own + self._masked_peer}/{total} points")

    def _send_own(self) -> None:
        """Sender thread: mask our points and queue them as r1, a few messages in flight."""
        try:
            data = self.prepared.send_points
            size = MESSAGE_POINTS * POINT_SIZE
            starts = list(range(0, len(data), size)) or [0]
            pending: deque[tuple[int, Any]] = deque()
            for seq, start in enumerate(starts):
                if self._stop.is_set():
                    return
                pending.append((seq, self.masker.submit(data[start : start + size])))
                while pending and (len(pending) > MAX_INFLIGHT or seq == len(starts) - 1):
                    done_seq, job = pending.popleft()
                    masked = job.result()
                    self.channel.send("r1", done_seq, masked, done_seq == len(starts) - 1)
                    self._masked_own += len(masked) // POINT_SIZE
                    self._report()
            self.prepared.send_points = b""  # all sent: free 32 bytes per key before matching
            del data
        except PsiError as exc:
            self.channel.fail(exc)
        except BaseException as exc:
            if not self._stop.is_set():
                self.channel.fail(PsiError(f"masking our points failed: {exc!r}"))

    def _exchange(self) -> tuple[bytearray | None, bytearray | None]:
        """Rounds 1 and 2; returns (our keys doubly masked in send order, the peer's) on a receiver."""
        self.channel.round = 1
        sender = threading.Thread(target=self._send_own, name="psi-r1-sender", daemon=True)
        sender.start()
        try:
            peer_double = bytearray(self._peer_unique * POINT_SIZE if self.self_receives else 0)
            pending: deque[tuple[int, Any, bool]] = deque()
            seq, received = 0, 0
            while True:
                payload, last = self.channel.recv("r1", seq)
                if len(payload) % POINT_SIZE:
                    raise ProtocolMismatch(f"peer {self.peer} sent a round-1 message of {len(payload)} bytes")
                received += len(payload) // POINT_SIZE
                if received > self._peer_unique:
                    raise ProtocolMismatch(
                        f"peer {self.peer} sent more points than the {self._peer_unique} it announced"
                    )
                pending.append((seq, self.masker.submit(payload), last))
                seq += 1
                while pending and (len(pending) > MAX_INFLIGHT or last):
                    done_seq, job, done_last = pending.popleft()
                    double = job.result()
                    self._masked_peer += len(double) // POINT_SIZE
                    if self.peer_receives:
                        self.channel.send("r2", done_seq, double, done_last)
                    if self.self_receives:
                        end = self._masked_peer * POINT_SIZE
                        peer_double[end - len(double) : end] = double
                    self._report()
                if last:
                    break
            if received != self._peer_unique:
                raise ProtocolMismatch(
                    f"peer {self.peer} announced {self._peer_unique} points but sent {received}"
                )
            while sender.is_alive():
                self.channel.check()
                sender.join(0.2)
            self.channel.check()
            if not self.self_receives:
                return None, None
            self.channel.round = 2
            own_double = bytearray(self.prepared.unique_keys * POINT_SIZE)
            seq, filled = 0, 0
            while True:
                payload, last = self.channel.recv("r2", seq)
                if filled + len(payload) > len(own_double) or len(payload) % POINT_SIZE:
                    raise ProtocolMismatch(f"peer {self.peer} returned more points than we sent")
                own_double[filled : filled + len(payload)] = payload
                filled += len(payload)
                seq += 1
                if last:
                    break
            if filled != len(own_double):
                raise ProtocolMismatch(
                    f"peer {self.peer} returned {filled // POINT_SIZE} points "
                    f"for our {self.prepared.unique_keys}"
                )
            return own_double, peer_double
        finally:
            self._stop.set()

    def _exchange_counts(self, counts: array.array[int]) -> array.array[int]:
        self.channel.send("r3", 0, _pack_counts(counts), True)
        payload, _ = self.channel.recv("r3", 0)
        theirs = _unpack_counts(payload)
        if len(theirs) != len(counts):
            raise ProtocolMismatch(
                f"peer {self.peer} matched {len(theirs)} keys, this party {len(counts)}: outputs cannot align"
            )
        return theirs
