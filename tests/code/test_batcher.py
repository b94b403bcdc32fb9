"""DynamicBatcher: results reach the right callers, batches stay bounded, failures stay local, stop drains."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from services.serving.batcher import BatcherClosedError, BatcherFullError, DynamicBatcher


def double(xs: list[int]) -> list[int]:
    return [x * 2 for x in xs]


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll the event loop until `condition()` holds, instead of sleeping a guessed time."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def test_results_map_back_to_callers_under_concurrency() -> None:
    seen: list[list[int]] = []

    def slow_double(xs: list[int]) -> list[int]:
        seen.append(list(xs))
        time.sleep(0.002)  # long enough for later arrivals to queue up behind a running batch
        return double(xs)

    async def main() -> None:
        batcher = DynamicBatcher(slow_double, max_batch=16, max_wait_ms=2.0)
        batcher.start()

        async def caller(x: int) -> int:
            await asyncio.sleep((x % 7) / 1000)  # staggered arrivals, not one burst
            return await batcher.submit(x)

        results = await asyncio.gather(*(caller(x) for x in range(200)))
        await batcher.stop()
        assert results == [2 * x for x in range(200)]
        assert sorted(x for batch in seen for x in batch) == list(range(200))
        assert max(len(batch) for batch in seen) <= 16
        stats = batcher.stats()
        assert stats.items == 200 and stats.batches == len(seen) and stats.queue_depth == 0
        assert sum(size * n for size, n in stats.batch_sizes.items()) == 200
        assert stats.items / stats.batches > 1

    asyncio.run(main())


def test_fn_runs_off_the_event_loop_in_the_named_thread() -> None:
    threads: list[str] = []

    def record(xs: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return double(xs)

    async def main() -> None:
        batcher = DynamicBatcher(record, name="onnx-batcher")
        batcher.start()
        assert await batcher.submit(3) == 6
        await batcher.stop()

    asyncio.run(main())
    assert threads[0].startswith("onnx-batcher") and threads[0] != threading.main_thread().name


@pytest.mark.parametrize(("fn", "error"), [
    (lambda xs: [1 // x for x in xs], ZeroDivisionError),  # fn raises
    (lambda xs: [], ValueError),  # fn returns the wrong number of results
])
def test_a_failing_batch_fails_only_its_callers(fn: Callable[[list[int]], list[int]], error: type[Exception]) -> None:
    async def main() -> None:
        calls = 0

        def first_batch_fails(xs: list[int]) -> list[int]:
            nonlocal calls
            calls += 1
            return fn(xs) if calls == 1 else double(xs)

        batcher = DynamicBatcher(first_batch_fails, max_batch=8, max_wait_ms=5.0)
        batcher.start()
        # Submitted together, before the worker runs: one batch of four.
        outcomes = await asyncio.gather(*(batcher.submit(x) for x in (0, 1, 2, 3)), return_exceptions=True)
        assert all(isinstance(o, error) for o in outcomes)
        assert await batcher.submit(5) == 10  # the worker survived
        stats = batcher.stats()
        assert (stats.batches, stats.failed_batches, stats.items) == (2, 1, 5)
        await batcher.stop()

    asyncio.run(main())


def test_a_lone_request_waits_at_most_max_wait_plus_fn_time() -> None:
    max_wait, fn_time = 0.05, 0.01

    def slow(xs: list[int]) -> list[int]:
        time.sleep(fn_time)
        return double(xs)

    async def main() -> None:
        batcher = DynamicBatcher(slow, max_wait_ms=max_wait * 1000)
        batcher.start()
        start = time.perf_counter()
        assert await batcher.submit(21) == 42
        elapsed = time.perf_counter() - start
        await batcher.stop()
        assert fn_time <= elapsed < max_wait + fn_time + 0.1  # margin for a busy CI machine
        assert batcher.stats().batch_sizes == {1: 1}

    asyncio.run(main())


def test_a_backlog_runs_at_once_without_another_max_wait() -> None:
    """Items that queued behind a running batch waited already; they must not wait max_wait again."""
    max_batch, max_wait = 4, 0.2
    release = threading.Event()
    sizes: list[int] = []

    def blocking(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        release.wait(5)  # the first batch holds the thread until the test says so
        return double(xs)

    async def main() -> None:
        batcher = DynamicBatcher(blocking, max_batch=max_batch, max_wait_ms=max_wait * 1000)
        batcher.start()
        first = [asyncio.create_task(batcher.submit(x)) for x in range(max_batch)]  # full: runs at once
        await wait_until(lambda: sizes == [max_batch])
        backlog = [asyncio.create_task(batcher.submit(x)) for x in range(10, 10 + max_batch + 3)]
        await wait_until(lambda: batcher.stats().queue_depth == max_batch + 3)  # the loop kept accepting
        await asyncio.sleep(max_wait + 0.05)  # the backlog's window passes while the first batch runs
        released = time.perf_counter()
        release.set()
        results = await asyncio.gather(*first, *backlog)
        assert time.perf_counter() - released < max_wait / 2
        assert results == [2 * x for x in [*range(max_batch), *range(10, 10 + max_batch + 3)]]
        assert sizes == [max_batch, max_batch, 3]
        await batcher.stop()

    asyncio.run(main())


def test_stop_drains_queued_items_then_refuses_new_ones() -> None:
    def slow(xs: list[int]) -> list[int]:
        time.sleep(0.005)
        return double(xs)

    async def main() -> None:
        batcher = DynamicBatcher(slow, max_batch=4, max_wait_ms=1.0)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(1)  # not started
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(x)) for x in range(20)]
        await wait_until(lambda: batcher.stats().batches == 1)
        assert batcher.stats().queue_depth == 16  # one batch running, four still queued
        await batcher.stop()
        assert [t.result() for t in pending] == [2 * x for x in range(20)]  # all answered before stop returned
        with pytest.raises(BatcherClosedError):
            await batcher.submit(1)
        assert batcher.stats().items == 20

    asyncio.run(main())


def test_a_full_queue_refuses_at_once_and_answers_what_it_holds() -> None:
    release = threading.Event()

    def gated(xs: list[int]) -> list[int]:
        release.wait(5)
        return double(xs)

    async def main() -> None:
        batcher = DynamicBatcher(gated, max_batch=2, max_wait_ms=0.0, max_queue=3)
        batcher.start()
        running = [asyncio.create_task(batcher.submit(x)) for x in range(2)]
        await wait_until(lambda: batcher.stats().batches == 1)  # two taken into the blocked call
        queued = [asyncio.create_task(batcher.submit(x)) for x in range(2, 5)]
        await wait_until(lambda: batcher.stats().queue_depth == 3)
        with pytest.raises(BatcherFullError, match="3 requests already waiting"):
            await batcher.submit(5)
        release.set()
        assert [await t for t in running + queued] == [0, 2, 4, 6, 8]
        assert await batcher.submit(5) == 10, "room again once the queue drained"
        await batcher.stop()

    asyncio.run(main())


def test_a_cancelled_caller_costs_no_compute() -> None:
    seen: list[int] = []

    def record(xs: list[int]) -> list[int]:
        seen.extend(xs)
        return double(xs)

    async def main() -> None:
        batcher = DynamicBatcher(record, max_wait_ms=20.0)
        batcher.start()
        submitted: list[int] = []

        async def caller(x: int) -> int:
            submitted.append(x)  # submit() enqueues in this same step, before its first await
            return await batcher.submit(x)

        gone, kept = asyncio.create_task(caller(1)), asyncio.create_task(caller(2))
        # Both taken into the batch that is still collecting (its 20 ms window is open).
        await wait_until(lambda: len(submitted) == 2 and batcher.stats().queue_depth == 0)
        gone.cancel()  # e.g. the HTTP client disconnected
        assert await kept == 4
        await batcher.stop()
        assert seen == [2] and gone.cancelled()

    asyncio.run(main())


def test_restarts_under_a_new_event_loop() -> None:
    """A lifespan may start the same batcher again in a new loop (FastAPI's TestClient does)."""
    batcher = DynamicBatcher(double)

    async def serve_once(x: int) -> int:
        batcher.start()
        try:
            return await batcher.submit(x)
        finally:
            await batcher.stop()

    assert [asyncio.run(serve_once(x)) for x in (1, 2)] == [2, 4]
    assert batcher.stats().batches == 2
