"""Ending a run cleanly when asked to: SIGTERM or SIGINT on one process, JAX's preemption notice on several.

``StopRequest`` does not stop anything itself: the train loop asks it after each step whether to stop, and
then writes a checkpoint and returns (docs/reliability.md).
"""

from __future__ import annotations

import signal
import sys
import threading

import jax


class StopRequest:
    """Ends training after the current step, with a checkpoint, when asked to: on SIGTERM or SIGINT, and on a
    multi-host run when JAX's preemption sync point is reached.

    Use as a context manager around the loop and call ``requested(step)`` after each step. The handlers are
    installed on entering and the previous ones restored on leaving; only the main thread can install them
    (elsewhere none are). A second signal goes to the previous handler (by default SIGINT raises
    ``KeyboardInterrupt``, SIGTERM ends the process). With several processes no handlers are installed:
    a local signal would stop one process at a step the others do not stop at. There JAX's preemption
    service (on by default in ``jax.distributed``) catches SIGTERM and agrees on one step for all
    processes, which ``jax.experimental.multihost_utils.reached_preemption_sync_point`` reports."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, multiprocess: bool = False):
        self.reason: str | None = None
        self._previous: dict = {}
        self._multiprocess = multiprocess
        self._sync_point = None
        if multiprocess:
            from jax.experimental import multihost_utils

            self._sync_point = getattr(multihost_utils, "reached_preemption_sync_point", None)

    def __enter__(self) -> "StopRequest":
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not None:  # None: a handler installed outside Python; leave it
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._previous:
            sig, handler = self._previous.popitem()
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.reason is not None:  # asked twice: do what would have happened without us
            self._restore()
            signal.raise_signal(signum)
            return
        self.reason = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step`` (call it after every step: the preemption sync point needs each
        one)."""
        if self._sync_point is not None:
            try:
                if self._sync_point(step) and self.reason is None:
                    self.reason = "a preemption notice"
            except Exception as e:  # e.g. a RuntimeError: the preemption service is off; never fail for it
                self._sync_point = None
                if jax.process_index() == 0:
                    print(
                        f"warning: JAX's preemption sync point is unavailable ({type(e).__name__}: {e}); "
                        "a preemption will not checkpoint",
                        file=sys.stderr,
                    )
        return self.reason is not None
