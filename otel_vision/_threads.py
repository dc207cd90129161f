"""Our threads never take a signal meant for the application.

A signal sent to the process goes to any thread that does not block it, and Python runs a signal's handler on the
main thread only: a thread of ours that takes SIGTERM notes it for the main thread, and a main thread waiting in C
(a lock, a multiprocessing queue) never looks. ``Pool.terminate()`` then waits forever for a worker that ignored its
SIGTERM. Without us there is no handler and the default action ends the process whichever thread takes the signal.

So every thread of ours starts with the application's signals blocked, and so does what it starts (gRPC's threads
inherit the mask of the thread that made them). Synchronous signals (a fault, an abort) stay deliverable: the
kernel sends those to the thread that caused them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Left deliverable: the synchronous signals (sent to the thread that caused them), and the two no mask can hold.
_NOT_BLOCKED = {
    getattr(signal, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT", "SIGKILL", "SIGSTOP")
    if hasattr(signal, name)
}
_APPLICATIONS: frozenset[int] = (
    frozenset(set(signal.valid_signals()) - _NOT_BLOCKED) if hasattr(signal, "pthread_sigmask") else frozenset()
)


@contextmanager
def signals_blocked() -> Iterator[None]:
    """The application's signals stay pending, not taken, on this thread for the block: a thread started in it, and
    any thread that one starts, never takes them. Where the platform has no per-thread masks, nothing changes."""
    if not _APPLICATIONS:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _APPLICATIONS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start(thread: threading.Thread) -> threading.Thread:
    """Start one of our threads, with the application's signals blocked in it from its first instruction."""
    with signals_blocked():
        thread.start()
    return thread


class ForkMask:
    """Across a fork of a configured process: threads that libraries restart in the child inside ``fork()`` itself
    (gRPC's) are made with the forking thread's mask, so that thread blocks the application's signals from just
    before the fork until our rebuild in the child, or the parent's return, is done. Kept per forking thread (two
    threads may fork at once)."""

    def __init__(self) -> None:
        self._previous: dict[int, set[int | signal.Signals]] = {}

    def block(self) -> None:
        if _APPLICATIONS:
            self._previous.setdefault(threading.get_ident(), signal.pthread_sigmask(signal.SIG_BLOCK, _APPLICATIONS))

    def restore(self) -> None:
        previous = self._previous.pop(threading.get_ident(), None)
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
