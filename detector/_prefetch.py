"""Run an iterator on a background thread, a few items ahead of its consumer.

Video decoding (PyAV releases the GIL while it decodes and converts) then overlaps with face
detection and classification instead of waiting for them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_S = 0.05


class Prefetch(Generic[T]):
    """``next(prefetch)`` returns the items of ``source``, which a thread pulls ``depth`` ahead.

    The source's exceptions are raised by ``next`` in the consumer's thread, after the items
    that came before them. :meth:`close` (or leaving the ``with`` block) stops the thread and
    waits for it, so the source can be closed safely afterwards; the thread stops at the latest
    once the item it is producing is ready.
    """

    def __init__(self, source: Iterator[T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, name="facetrust-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        while not self._stop.is_set():  # checked before each pull: no item is pulled after close()
            try:
                item = next(self._source)
            except StopIteration:
                self._put(_DONE)
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                self._put(exc)
                return
            if not self._put(item):
                return

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the producer thread and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                pass
        self._finished = True

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
