"""Running many file transfers at once: a pool of daemon threads and a thread-safe progress meter.

Daemon threads, not ``concurrent.futures``: on Ctrl-C the main thread must be able to leave at once
(nothing is visible until the manifest is written, so in-flight transfers can simply be dropped), and
the standard pool joins its threads at exit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from aidi.dataspace.store import BytesCallback

T = TypeVar("T")
R = TypeVar("R")


def run_parallel(fn: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """``[fn(item) for item in items]`` on up to ``jobs`` threads, results in order. The first exception
    stops handing out work and is re-raised here once running items have finished or been abandoned."""
    if not items:
        return []
    if jobs <= 1 or len(items) == 1:
        return [fn(item) for item in items]
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(items)):
        todo.put(index)
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []
    stop = threading.Event()
    finished = threading.Semaphore(0)
    workers = min(jobs, len(items))

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[index] = fn(items[index])
                except BaseException as exc:
                    errors.append(exc)
                    stop.set()
        finally:
            finished.release()

    for _ in range(workers):
        threading.Thread(target=work, daemon=True, name="aidi-transfer").start()
    try:
        for _ in range(workers):
            # A timeout keeps the main thread responsive to Ctrl-C.
            while not finished.acquire(timeout=0.2):
                pass
    except BaseException:
        stop.set()
        raise
    if errors:
        raise errors[0]
    return cast(list[R], results)  # no worker failed, so every slot holds its result


class Meter:
    """Counts files and bytes from many threads; calls ``report`` at most every ``interval`` seconds."""

    def __init__(self, report: Callable[[], None] | None, interval: float = 0.25) -> None:
        self.lock = threading.Lock()
        self.report = report
        self.interval = interval
        self.last = 0.0

    def tick(self, force: bool = False) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            self.report()

    def bytes_callback(self, add: Callable[[int], None]) -> BytesCallback:
        def on_bytes(count: int) -> None:
            with self.lock:
                add(count)
            self.tick()
        return on_bytes

