"""Background prefetch: produce the next items on a thread while the consumer computes.

Batch generation and loading are NumPy work that releases the GIL for most of its time,
and the Numba kernels run with ``nogil``, so one producer thread overlaps data with compute.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _DONE, _ERROR = 0, 1, 2


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` elements ahead.

    An exception in the producer is re-raised in the consumer. When the consumer stops
    early (``break`` then garbage collection, or ``close()``), the thread is told to
    stop and joined, so no thread outlives the iteration.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not _put(q, (_ITEM, item), stop):
                    return
            _put(q, (_DONE, None), stop)
        except BaseException as exc:  # forwarded to the consumer
            _put(q, (_ERROR, exc), stop)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="numbadlrm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _put(q: queue.Queue, item: tuple, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
