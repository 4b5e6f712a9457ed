"""Build batches in a background thread, a few ahead of the consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def in_thread(batches: Iterator[tuple[int, T]], ahead: int) -> Iterator[T]:
    """Build batches in a background thread, up to ``ahead`` ready: reading (memcpy from maps)
    and the consumer's step both release the GIL, so they overlap. Errors are re-raised
    here; leaving the loop early stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for _, batch in batches:
                while not stop.is_set():
                    try:
                        ready.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                del batch  # the queue holds the only reference: its buffers can be reused
                if stop.is_set():
                    return
            item = done
        except BaseException as e:  # handed to the consumer
            item = e
        finally:
            batches.close()
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="scav-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            del item
    finally:
        stop.set()
        thread.join()
