"""Dynamic batching: concurrent `submit(item)` calls share one blocking model call.

One worker task takes the first queued item, collects more until `max_batch` items or
`max_wait_ms` after that first item *arrived*, then runs `fn` in a dedicated one-thread
executor so the event loop keeps accepting requests meanwhile. Items that queue up while
a batch runs form the next batch; their window started when they arrived, so a backlog
runs at once. The price: a lone request at low load waits up to `max_wait_ms` for company
(`max_wait_ms=0` turns this off and batches only what queued during the previous call).

`stop()` drains: it refuses new items and answers everything already queued.

>>> async def demo() -> list[int]:
...     batcher = DynamicBatcher(lambda xs: [x * 2 for x in xs], max_batch=4)
...     batcher.start()
...     results = await asyncio.gather(*(batcher.submit(x) for x in range(6)))
...     await batcher.stop()
...     return [*results, batcher.stats().batches]
>>> asyncio.run(demo())
[0, 2, 4, 6, 8, 10, 2]
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The batcher is not running: not started yet, stopped, or its worker was cancelled."""


class BatcherFullError(RuntimeError):
    """`max_queue` items already wait: the caller should shed load rather than queue without end."""


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot for metrics.

    `batch_sizes` counts batches per exact size (a histogram's raw data); `queue_depth` counts
    items not yet taken into a batch.
    """

    batches: int
    items: int
    failed_batches: int
    queue_depth: int
    batch_sizes: dict[int, int] = field(default_factory=dict)


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float


class DynamicBatcher(Generic[T, R]):
    """Batches `submit` calls into `fn(items) -> results`, one result per item, in order."""

    def __init__(self, fn: Callable[[list[T]], list[R]], max_batch: int = 32,
                 max_wait_ms: float = 2.0, name: str = "batcher", max_queue: int = 4096) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"need max_batch >= 1, max_wait_ms >= 0 and max_queue >= 1, "
                             f"got {max_batch}, {max_wait_ms}, {max_queue}")
        self.fn, self.max_batch, self.max_wait, self.name = fn, max_batch, max_wait_ms / 1000, name
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Pending[T, R] | None] = asyncio.Queue()  # None: stop marker
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: list[_Pending[T, R]] = []
        self._batches = self._items = self._failed = 0
        self._sizes: Counter[int] = Counter()

    def start(self) -> None:
        """Start the worker; call inside the running event loop (e.g. a FastAPI lifespan)."""
        if self._worker is not None:
            raise RuntimeError(f"{self.name} is already running")
        # Its own thread, not asyncio.to_thread's shared pool: the model call never waits behind
        # other blocking work, and one thread leaves the cores to ONNX Runtime's intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        # A fresh queue binds to this loop: each lifespan may run in a new one (TestClient does).
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Refuse new items, answer every queued one, then end the worker and its thread."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self._queue.put_nowait(None)  # FIFO: everything submitted before stop() runs first
        await worker

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its result; raises what `fn` raised for its batch."""
        if self._worker is None:
            raise BatcherClosedError(f"{self.name} is not running")
        if self._queue.qsize() >= self.max_queue:
            raise BatcherFullError(f"{self.name}: {self.max_queue} requests already waiting")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait(_Pending(item, future, loop.time()))
        return await future

    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._items, self._failed, self._queue.qsize(), dict(self._sizes))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        try:
            while not stopping:
                first = await self._queue.get()
                if first is None:
                    break
                batch, deadline = [first], first.arrived + self.max_wait
                while len(batch) < self.max_batch:
                    if not self._queue.empty():  # queued items join at once, whatever the deadline
                        pending = self._queue.get_nowait()
                    elif (timeout := deadline - loop.time()) <= 0:
                        break
                    else:
                        try:
                            async with asyncio.timeout(timeout):
                                pending = await self._queue.get()
                        except TimeoutError:
                            break
                    if pending is None:
                        stopping = True
                        break
                    batch.append(pending)
                # A caller that went away (client disconnect cancels its await) costs no compute.
                self._running = [p for p in batch if not p.future.done()]
                if self._running:
                    await self._call(loop)
                self._running = []
        finally:  # normally empty; on cancellation (loop shutdown) nobody is left waiting forever
            self._fail_all(BatcherClosedError(f"{self.name} stopped before answering"))

    async def _call(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._running
        self._batches, self._items = self._batches + 1, self._items + len(batch)
        self._sizes[len(batch)] += 1
        try:
            results = await loop.run_in_executor(self._executor, self.fn, [p.item for p in batch])
            if len(results) != len(batch):
                raise ValueError(f"{self.name}: fn returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # fails this batch's callers only; the worker carries on
            self._failed += 1
            log.warning("%s: batch of %d failed: %r", self.name, len(batch), exc)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)

    def _fail_all(self, exc: BaseException) -> None:
        self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # idle unless cancelled mid-call; never block the loop
        while not self._queue.empty():
            if (pending := self._queue.get_nowait()) is not None:
                self._running.append(pending)
        for p in self._running:
            if not p.future.done():
                p.future.set_exception(exc)
        self._running = []
