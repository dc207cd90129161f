"""Small tools for finished spans in the export path: an amended copy, and a background drainer."""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, Generic, TypeVar, cast

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Link
from opentelemetry.util.types import AttributeValue

from otel_vision import _threads
from otel_vision._errors import report_internal_error
from otel_vision._limits import FORK_WAIT_S

Item = TypeVar("Item")


def amended(
    span: ReadableSpan, *, attributes: Mapping[str, AttributeValue] | None = None, links: Sequence[Link] = ()
) -> ReadableSpan:
    """A copy of a finished span with attributes and links added (finished spans are immutable)."""
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes={**(span.attributes or {}), **attributes} if attributes else span.attributes,
        events=span.events,
        links=(*span.links, *links) if links else span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class _Mark:
    """Put among a `Drainer`'s items by `Drainer.drain_wait`: set when everything before it has been handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_drainer_thread = threading.local()


def on_a_drainer_thread() -> bool:
    """Whether the calling thread is a `Drainer`'s: work handed to it needs no other thread to keep it off the
    application's (the span hand-over records the duration metrics on the spot)."""
    return getattr(_drainer_thread, "active", False)


IDLE_AFTER_S: Final = 1.0
"""A drainer's thread that found nothing to handle for this long sleeps until an appender wakes it (`Drainer.idle`)."""
IDLE_SLEEP_S: Final = 5.0
"""The longest an idle drainer's thread sleeps (in case an item comes from code that does not check `idle`)."""


class Drainer(Generic[Item]):
    """Items appended on any thread (a deque append, nothing more) and handled by one background thread every
    ``interval`` seconds, or at once by `drain` (before a flush).

    An idle process does not pay for the polling: after `IDLE_AFTER_S` without items the thread sleeps, and `idle`
    tells appenders to `wake` it (they check it after appending; the thread checks for items after setting it, so one
    of the two sees the other)."""

    def __init__(self, handle: Callable[[Item], None], what: str, name: str, interval: float = 0.2) -> None:
        self.items: deque[Item] = deque()
        self._handle = handle
        self._what = what
        self._interval = interval
        self._wake = threading.Event()
        self._lock = threading.RLock()
        self._handling = False
        """An item is being handled (set and read with `_lock` held)."""
        self.stopped = False
        """Set by `stop`, before its last drain."""
        self.idle = False
        """The thread sleeps until woken: an appender calls `wake` after appending."""
        self._thread = _threads.start(threading.Thread(target=self._run, name=name, daemon=True))
        self._created = next(_CREATED)
        self._kept_by_children = _kept_by_children > 0
        _DRAINERS.add(self)

    def drain(self) -> int:
        """Handle every item appended before the call, on the calling thread (items appended meanwhile wait for the
        next drain: a drain ends, however fast others append); returns how many it took.

        The lock is held for one item at a time, taken and handled under it: two threads draining at once still
        handle the items one by one in order, and a fork waits for one item, not for a whole backlog. A drain that
        interrupts one on the same thread while it handles an item (a signal handler that flushes or shuts down)
        returns at once, leaving the rest to the interrupted drain: waiting for it would wait for ever, and handling
        items meanwhile would re-enter what it was calling."""
        items = self.items
        taken = len(items)
        for index in range(taken):
            with self._lock:  # re-entrant: only the thread holding it gets past it while `_handling` is set
                if self._handling:
                    return index
                try:
                    item = items.popleft()
                except IndexError:
                    break
                if type(item) is _Mark:
                    cast(_Mark, item).done.set()
                    continue
                self._handling = True
                try:
                    self._handle(item)
                except Exception:
                    report_internal_error(self._what)
                finally:
                    self._handling = False
        return taken

    def drain_wait(self, timeout: float) -> bool:
        """Have the drainer's thread handle every item appended so far, waiting at most ``timeout`` seconds; ``True``
        once it has. The caller holds none of our locks meanwhile, so a signal handler that interrupts it (SIGTERM
        during a flush) can still drain."""
        if self.stopped or not self._thread.is_alive():  # a forked child's copy, or stopped: nobody else will
            self.drain()
            return True
        mark = _Mark()
        self.items.append(mark)  # type: ignore[arg-type]  # a marker among the items, recognized by `drain`
        self._wake.set()
        return mark.done.wait(max(0.0, timeout))

    def wake(self) -> None:
        """Drain now rather than at the next interval (a backlog is building up, or the thread is `idle`)."""
        self._wake.set()

    def _run(self) -> None:
        _drainer_thread.active = True
        quiet = 0.0
        while not self.stopped:
            if quiet < IDLE_AFTER_S:
                self._wake.wait(self._interval)
            else:
                self.idle = True
                if not self.items:  # appended before `idle` was set: its appender saw False and did not wake us
                    self._wake.wait(IDLE_SLEEP_S)
                self.idle = False
            self._wake.clear()
            quiet = 0.0 if self.drain() else quiet + self._interval

    def stop(self) -> None:
        """End the thread, then drain. An appender checks `stopped` after appending: it saw ``False`` only if its
        item was there before this drain, and drains itself otherwise."""
        self.stopped = True
        self._wake.set()
        self.drain()


_DRAINERS: weakref.WeakSet[Drainer[Any]] = weakref.WeakSet()
_CREATED = itertools.count()
_kept_by_children = 0


@contextmanager
def kept_by_forked_children() -> Iterator[None]:
    """Drainers made in this block belong to a pipeline that a forked child goes on using (a standalone one, as
    `otel_vision.testing.capture_telemetry` builds): a fork waits for the item each of them is handling. A child of
    `configure()` builds a pipeline of its own and never drains the parent's, so its forks do not wait."""
    global _kept_by_children
    _kept_by_children += 1
    try:
        yield
    finally:
        _kept_by_children -= 1


_held_for_fork: list[threading.RLock] = []


def _before_fork() -> None:
    """No drain of a pipeline the child keeps (`kept_by_forked_children`) runs across a fork: one under way holds the
    locks of what it calls (the SDK's metric aggregations, a span processor's queue), and the child would find them
    held by a thread it does not have. Taken in the order the drainers were made, which is the order a drain takes
    them in (the span hand-over, made first, drains into the duration metrics and the batch members when they fall
    behind)."""
    kept = [drainer for drainer in list(_DRAINERS) if drainer._kept_by_children]
    for drainer in sorted(kept, key=lambda d: d._created):
        lock = drainer._lock
        if lock.acquire(timeout=FORK_WAIT_S):
            _held_for_fork.append(lock)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _after_fork_in_child() -> None:
    """The child has none of the parent's threads: it drains on the calling thread (its copy of the drainer thread is
    not alive), with locks of its own (a lock the parent's thread held at the fork stays held otherwise)."""
    _held_for_fork.clear()
    for drainer in list(_DRAINERS):
        drainer._lock = threading.RLock()
        drainer._handling = False
        drainer._wake = threading.Event()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
