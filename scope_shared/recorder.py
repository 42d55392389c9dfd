"""The outcome writer: recorded outcomes go to the anchor store now, or from a background thread.

With ``write_behind`` above 0, :meth:`Recorder.put` queues and returns; a daemon thread writes what was
queued in one batch at most ``write_behind`` seconds after the first outcome arrived. :meth:`Recorder.flush`
writes at once; :meth:`Recorder.close` (also run at interpreter exit) writes what is left and stops the
thread. Outcomes kept while the store was down are written by a later flush.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Sequence

from scope_shared.errors import DataError, StoreUnavailableError
from scope_shared.types import Outcome

__all__ = ["Recorder"]

logger = logging.getLogger(__name__)

Write = Callable[[Sequence[Outcome]], object]


class Recorder:
    """Writes outcomes through ``write`` (the store's ``add``), at once or behind.

    Args:
        write: writes a batch of outcomes; raises :class:`StoreUnavailableError` when the store is down and
            :class:`DataError` when it rejects the batch.
        write_behind: seconds an outcome may wait before it is written (0: write at once).
    """

    def __init__(self, write: Write, *, write_behind: float = 0.0) -> None:
        self._write = write
        self.write_behind = write_behind
        self._pending: list[Outcome] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time: batches land in recording order
        self._queued = threading.Event()
        self._writer: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def pending(self) -> int:
        """Outcomes not written yet: queued by ``write_behind``, or kept while the store was down."""
        with self._pending_lock:
            return len(self._pending)

    def put(self, outcome: Outcome) -> None:
        """Queue ``outcome``; written at once unless ``write_behind`` is above 0."""
        with self._pending_lock:
            self._pending.append(outcome)
        if self.write_behind > 0 and not self._closing.is_set():
            self._start_writer()
            self._queued.set()
        else:
            self.flush()

    def flush(self) -> int:
        """Write the outcomes not written yet, in one batch; returns how many were written.

        Of several outcomes of one model on one query, the last recorded is written (as writing them one by
        one would leave it). If the store is down they stay queued; if the store rejects them, the
        :class:`DataError` is raised and they are dropped, so they cannot block later outcomes.
        """
        with self._flush_lock:
            with self._pending_lock:
                taken = list(self._pending)
            if not taken:
                return 0
            batch = list({(o.query, o.model): o for o in taken}.values())
            try:
                self._write(batch)
            except StoreUnavailableError as exc:
                logger.warning("anchor store unavailable; %d outcome(s) kept for retry: %s", len(taken), exc)
                return 0
            except DataError:
                with self._pending_lock:
                    del self._pending[: len(taken)]
                raise
            with self._pending_lock:
                del self._pending[: len(taken)]  # only flush removes, under _flush_lock: these are the first
            return len(taken)

    def close(self) -> None:
        """Write what is queued and stop the write-behind thread (a later ``put`` writes at once)."""
        self._closing.set()
        self._queued.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=max(5.0, 2 * self.write_behind))
        self.flush()

    def _start_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._pending_lock:
            if self._writer is not None and self._writer.is_alive():
                return
            ref = weakref.ref(self)
            self._writer = threading.Thread(target=_write_loop, args=(ref, self._queued), daemon=True)
            self._writer.name = "scope-write-behind"
            self._writer.start()
            atexit.register(_close_at_exit, ref)


def _write_loop(ref: weakref.ReferenceType[Recorder], queued: threading.Event) -> None:
    """The write-behind thread: wait for a queued outcome, gather for ``write_behind`` seconds, write."""
    while True:
        fired = queued.wait(timeout=30.0)
        recorder = ref()
        if recorder is None:  # the recorder was collected: nothing left to write for
            return
        if not fired:
            del recorder
            continue
        closing = recorder._closing  # noqa: SLF001 - the recorder's own thread
        closing.wait(recorder.write_behind)  # gather what else is recorded meanwhile; close() cuts it short
        queued.clear()
        try:
            recorder.flush()
        except Exception:
            logger.exception("write-behind: recorded outcomes could not be written")
        if closing.is_set():
            return
        if recorder.pending:  # the store was down: try again after another wait
            closing.wait(max(recorder.write_behind, 1.0))
            queued.set()
        del recorder


def _close_at_exit(ref: weakref.ReferenceType[Recorder]) -> None:
    recorder = ref()
    if recorder is not None and recorder.pending:
        recorder.close()
