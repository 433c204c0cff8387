"""Running ``encode`` over a scene's items in parallel, results in source order, memory bounded.

Re-encoding runs in worker processes fed through ``multiprocessing`` queues. Not a
``ProcessPoolExecutor``: its workers block writing each result into a pipe until the parent reads it,
so they idle whenever the parent is descheduled; a queue's feeder thread lets a worker go on encoding
while its last result is still on the way. Parsing scenes in pass-through run in threads: their work is
file reads and PNG decoding, which release the GIL, and shipping every image between processes cost
more than the checks. Detection in pass-through runs on the calling thread (see ``encoded``).
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.queues import Queue

from aidi.pack import images
from aidi.pack.encode import Encoded, encode
from aidi.pack.pack_config import PackConfig
from aidi.pack.sources import Item, items

BATCH = 32
WINDOW_PER_WORKER = 8   # batches in flight per worker: enough that workers rarely wait for the writer


def _batches(source: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in source:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encoded(config: PackConfig, jobs: int) -> Iterator[tuple[Item, Encoded]]:
    """Every item of the scene with its record (or its problems), in source order."""
    if jobs <= 1 or (config.resize is None and config.task == "detection"):
        # Detection pass-through is a read, a header check and a copy per image; its heavy part, hashing
        # and writing the .rec, already runs on the writer's own two threads (recordio's pipelined
        # writer). Encoding threads beside them only fight over the GIL: measured 20-40% slower.
        for item in items(config):
            yield item, encode(item, config)
    elif config.resize is None:
        yield from _threads(config, jobs)
    else:
        yield from _processes(config, jobs)


def _threads(config: PackConfig, jobs: int) -> Iterator[tuple[Item, Encoded]]:
    pool = ThreadPoolExecutor(jobs)
    try:
        pending: deque[tuple[list[Item], Future[list[Encoded]]]] = deque()
        for batch in _batches(items(config), BATCH):
            pending.append((batch, pool.submit(lambda b: [encode(item, config) for item in b], batch)))
            if len(pending) >= WINDOW_PER_WORKER * jobs:
                done, future = pending.popleft()
                yield from zip(done, future.result(), strict=True)
        while pending:
            done, future = pending.popleft()
            yield from zip(done, future.result(), strict=True)
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, queued batches are not worth finishing


def _work(config: PackConfig, tasks: Queue, results: Queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, once
    if config.resize is not None:
        images.one_thread_per_process()
    for number, batch in iter(tasks.get, None):
        try:
            results.put((number, [encode(item, config) for item in batch], None))
        except Exception:
            results.put((number, None, traceback.format_exc()))


def _processes(config: PackConfig, jobs: int) -> Iterator[tuple[Item, Encoded]]:
    context = multiprocessing.get_context("fork")
    tasks: Queue = context.Queue()
    results: Queue = context.Queue()
    workers = [context.Process(target=_work, args=(config, tasks, results), daemon=True) for _ in range(jobs)]
    for worker in workers:
        worker.start()
    finished = False
    try:
        source = enumerate(_batches(items(config), BATCH))
        sent: dict[int, list[Item]] = {}
        received: dict[int, list[Encoded]] = {}
        following = 0

        def send() -> None:
            while len(sent) < WINDOW_PER_WORKER * jobs:
                number, batch = next(source, (None, None))
                if number is None or batch is None:
                    return
                sent[number] = batch
                tasks.put((number, batch))

        send()
        while sent:
            while following not in received:
                received.update([_receive(results, workers)])
            yield from zip(sent.pop(following), received.pop(following), strict=True)
            following += 1
            send()
        finished = True
    finally:
        # Done: let the workers drain and exit. Failed or interrupted: stop them now, queued work and all.
        for worker in workers:
            if finished:
                tasks.put(None)
            else:
                worker.terminate()
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
        for channel in (tasks, results):
            channel.cancel_join_thread()
            channel.close()


def _receive(results: Queue, workers: list) -> tuple[int, list[Encoded]]:
    while True:
        try:
            number, batch, error = results.get(timeout=1.0)
        except queue.Empty:
            dead = [w for w in workers if not w.is_alive()]
            if dead:
                raise RuntimeError(f"a packing worker died (exit code {dead[0].exitcode}); out of memory? "
                                   "Try fewer --jobs") from None
            continue
        if error is not None:
            raise RuntimeError(f"a packing worker failed on batch {number}:\n{error}")
        return number, batch
