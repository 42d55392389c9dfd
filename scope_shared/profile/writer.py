"""The profiling run's store writer: graded outcomes written in a thread of its own, by group commit."""

from __future__ import annotations

import threading

from scope_shared.store import AnchorStore
from scope_shared.types import Outcome

__all__ = ["OutcomeWriter"]


class OutcomeWriter:
    """Writes graded outcomes to the store in a thread of its own: each write takes every outcome graded since
    the last one began (group commit), so calls go on while the store writes and nothing waits for a batch."""

    def __init__(self, store: AnchorStore, *, poll: float = 0.2) -> None:
        self._store = store
        self._poll = poll
        self._cond = threading.Condition()
        self._pending: list[Outcome] = []
        self._busy = False
        self._closed = False
        self.error: BaseException | None = None
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="scope-profile-writer", daemon=True)
        self._thread.start()

    def put(self, outcome: Outcome) -> None:
        with self._cond:
            self._pending.append(outcome)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending, self._busy = self._pending, [], True
            try:
                self._store.add(batch, batch_size=len(batch), progress=False)
            except BaseException as exc:  # the run's thread raises it
                with self._cond:
                    self.error = self.error or exc
                    self._busy, self._closed = False, True
                    self._cond.notify_all()
                return
            with self._cond:
                self.writes += 1
                self._busy = False
                self._cond.notify_all()

    def close(self) -> None:
        """Write what is pending, then stop; raises the store's error, if a write failed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._pending or self._busy) and self.error is None:
                self._cond.wait(self._poll)
        self._thread.join()
        if self.error is not None:
            raise self.error
