"""The outcome writer: recorded outcomes go to the anchor store now, or from a background thread.

With ``write_behind`` above 0, :meth:`Recorder.put` queues and returns; a daemon thread writes what was
queued in one batch at most ``write_behind`` seconds after the first outcome arrived. :meth:`Recorder.flush`
writes at once; :meth:`Recorder.close` writes what is left and stops the thread. It also runs at interpreter
exit, and on SIGTERM when the program has no SIGTERM handler of its own (it then exits as SIGTERM would).

Nothing recorded is lost silently:

- outcomes kept while the store is down are written by a later flush; those still unwritten when the process
  exits go to an *unsent* file (JSON lines) that the next process recording into the same store replays;
- an outcome the store rejects (it should not happen: outcomes are validated when built) is dropped with an
  ERROR log line and appended to ``<unsent>.rejected``, and never blocks the outcomes queued with it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from scope_shared.errors import StoreUnavailableError
from scope_shared.types import Outcome

__all__ = ["Recorder", "unsent_path"]

logger = logging.getLogger(__name__)

Write = Callable[[Sequence[Outcome]], object]


class Recorder:
    """Writes outcomes through ``write`` (the store's ``add``), at once or behind.

    Args:
        write: writes a batch of outcomes; raises :class:`StoreUnavailableError` when the store is down.
        write_behind: seconds an outcome may wait before it is written (0: write at once).
        unsent: the file outcomes still unwritten at exit go to, and that is replayed on the next start
            (None: none; they are then logged as lost).
    """

    def __init__(self, write: Write, *, write_behind: float = 0.0, unsent: Path | None = None) -> None:
        self._write = write
        self.write_behind = write_behind
        self.unsent = unsent
        self._pending: list[Outcome] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time: batches land in recording order
        self._queued = threading.Event()
        self._writer: threading.Thread | None = None
        self._closing = threading.Event()
        self._exit_hooked = False
        self._replayed = unsent is None

    @property
    def pending(self) -> int:
        """Outcomes not written yet: queued by ``write_behind``, or kept while the store was down."""
        with self._pending_lock:
            return len(self._pending)

    def put(self, outcome: Outcome) -> None:
        """Queue ``outcome``; written at once unless ``write_behind`` is above 0."""
        self._hook_exit()
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
        one would leave it). If the store is down they stay queued. If the store rejects the batch, its
        outcomes are written one by one and those rejected are dropped (logged and kept in the rejected
        file): one bad outcome never blocks the others, nor later routing.
        """
        self._replay()
        with self._flush_lock:
            with self._pending_lock:
                taken = list(self._pending)
            if not taken:
                return 0
            batch = list({(o.query, o.model): o for o in taken}.values())
            try:
                self._write(batch)
                written = len(taken)
            except StoreUnavailableError as exc:
                logger.warning("anchor store unavailable; %d outcome(s) kept for retry: %s", len(taken), exc)
                return 0
            except Exception:  # the store rejected the batch: find the outcome that poisons it
                written = self._one_by_one(batch)
                if written < 0:
                    return 0
            with self._pending_lock:
                del self._pending[: len(taken)]  # only flush removes, under _flush_lock: these are the first
            return written

    def _one_by_one(self, batch: Sequence[Outcome]) -> int:
        """Write ``batch`` outcome by outcome, dropping those the store rejects; -1 if the store went down."""
        written = 0
        for outcome in batch:
            try:
                self._write([outcome])
                written += 1
            except StoreUnavailableError as exc:
                logger.warning("anchor store unavailable; outcomes kept for retry: %s", exc)
                return -1
            except Exception as exc:
                logger.error(  # noqa: TRY400 - the outcome is dropped, not the program's failure
                    "the anchor store rejected the outcome of %s on query %.60r; dropped (%s: %s)",
                    outcome.model,
                    outcome.query,
                    type(exc).__name__,
                    exc,
                )
                self._append(self._rejected_path(), [outcome])
        return written

    def close(self) -> None:
        """Write what is queued and stop the write-behind thread (a later ``put`` writes at once).

        What the store cannot take now goes to the unsent file, for the next process to replay.
        """
        self._closing.set()
        self._queued.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=max(5.0, 2 * self.write_behind))
        self.flush()
        with self._pending_lock:
            left, self._pending = self._pending, []
        if not left:
            return
        if self.unsent is None:
            logger.error("%d recorded outcome(s) could not be written and are lost (no unsent file)", len(left))
            return
        self._append(self.unsent, left)
        logger.warning("%d recorded outcome(s) not written; kept in %s for the next start", len(left), self.unsent)

    # -- the unsent and rejected files ---------------------------------------------------------

    def _rejected_path(self) -> Path | None:
        return self.unsent.with_name(self.unsent.name + ".rejected") if self.unsent is not None else None

    @staticmethod
    def _append(path: Path | None, outcomes: Sequence[Outcome]) -> None:
        if path is None or not outcomes:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                for o in outcomes:
                    fh.write(json.dumps(o.model_dump(mode="json"), ensure_ascii=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            logger.error("could not keep %d outcome(s) in %s: %s", len(outcomes), path, exc)

    def _replay(self) -> None:
        """Queue the outcomes a previous process left in the unsent file (once; the file is claimed first)."""
        if self._replayed:
            return
        self._replayed = True
        path = self.unsent
        assert path is not None
        claimed = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            os.replace(path, claimed)  # atomic: of several processes, one takes the file
        except OSError:
            return
        outcomes: list[Outcome] = []
        with claimed.open(encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValueError, ValidationError):
                    outcomes.append(Outcome.model_validate_json(line))
        with self._pending_lock:
            self._pending[:0] = outcomes
        claimed.unlink(missing_ok=True)
        logger.info("replaying %d outcome(s) a previous process could not write (%s)", len(outcomes), path)

    # -- the thread and the exit hooks ---------------------------------------------------------

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

    def _hook_exit(self) -> None:
        if self._exit_hooked:
            return
        self._exit_hooked = True
        atexit.register(_close_at_exit, weakref.ref(self))
        _exit_on_sigterm()


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


_SIGTERM_LOCK = threading.Lock()
_sigterm_hooked = False


def _exit_on_sigterm() -> None:
    """On SIGTERM, exit as on SIGINT (running the exit hooks that write what is queued).

    Only when the program left SIGTERM's default action in place and this is the main thread: a program
    with its own handler (a server's graceful shutdown) keeps it, and should call ``engine.close()``.
    """
    global _sigterm_hooked
    with _SIGTERM_LOCK:
        if _sigterm_hooked or threading.current_thread() is not threading.main_thread():
            return
        _sigterm_hooked = True
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return
            signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # not the main interpreter, or no signals here
            return


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(128 + signum)


def unsent_path(unsent: str | Path | None, identity: Callable[[], str | None]) -> Path | None:
    """The unsent file of a store: ``unsent`` itself, or for ``"auto"`` one per store under
    ``$XDG_STATE_HOME/scope-router/unsent/``, named after its ``identity()`` (None: a store without one, e.g.
    in memory, gets no file)."""
    if unsent != "auto":
        return Path(unsent) if unsent is not None else None
    name = identity()
    if name is None:
        return None
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "scope-router" / "unsent" / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".jsonl")
