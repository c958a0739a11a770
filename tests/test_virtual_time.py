"""The virtual-time loop: timers jump, results are exact, wall time is small."""

from __future__ import annotations

import asyncio
import random
import time

import backoff
import pytest

from resilience.clock import iso_utc, wall_time
from resilience.testing import VirtualTimeLoop, run_virtual


def test_thousand_tasks_each_sleep_one_virtual_hour() -> None:
    rng = random.Random(2026)
    plans = []
    for _ in range(1000):
        parts = [rng.random() for _ in range(rng.randint(1, 8))]
        total = sum(parts)
        plans.append([3600.0 * p / total for p in parts])

    async def sleeper(index: int, plan: list[float], finished: list[int]) -> float:
        loop = asyncio.get_running_loop()
        for pause in plan:
            await asyncio.sleep(pause)
        finished.append(index)
        return loop.time()

    async def main() -> tuple[list[float], list[int]]:
        finished: list[int] = []
        ends = await asyncio.gather(*(sleeper(i, p, finished) for i, p in enumerate(plans)))
        return list(ends), finished

    started = time.perf_counter()
    ends, finished = run_virtual(main())
    wall = time.perf_counter() - started
    print(f"1,000 tasks x 1 virtual hour: {wall:.3f}s wall")
    assert ends == pytest.approx([3600.0] * 1000, abs=1e-6)
    assert sorted(finished) == list(range(1000))
    # Completion order follows virtual end times exactly (float sums differ by ulps).
    completion_times = [ends[i] for i in finished]
    assert completion_times == sorted(completion_times)


def test_order_of_wakeups_follows_virtual_deadlines() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []

        async def nap(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            seen.append((name, loop.time()))

        await asyncio.gather(nap("c", 300), nap("a", 1), nap("b", 60))
        return seen

    assert run_virtual(main()) == [("a", 1.0), ("b", 60.0), ("c", 300.0)]


def test_wait_for_call_later_and_backoff_use_virtual_time() -> None:
    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        marks: dict[str, float] = {}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(1000), timeout=5)
        marks["wait_for"] = loop.time()
        fired = loop.create_future()
        loop.call_later(42, fired.set_result, None)
        await fired
        marks["call_later"] = loop.time()
        tries = 0

        @backoff.on_exception(backoff.constant, ValueError, max_tries=3, interval=10, jitter=None)
        async def flaky() -> None:
            nonlocal tries
            tries += 1
            raise ValueError("flaky")

        with pytest.raises(ValueError, match="flaky"):
            await flaky()
        marks["backoff"] = loop.time()
        marks["tries"] = tries
        return marks

    assert run_virtual(main()) == {
        "wait_for": 5.0,
        "call_later": 47.0,
        "backoff": 67.0,
        "tries": 3,
    }


def test_wall_time_follows_the_loop_epoch() -> None:
    async def main() -> tuple[str, str]:
        before = iso_utc(wall_time())
        await asyncio.sleep(86_400 + 90)
        return before, iso_utc(wall_time())

    assert run_virtual(main(), wall_epoch=1_767_225_600.0) == (
        "2026-01-01T00:00:00.000Z",
        "2026-01-02T00:01:30.000Z",
    )


def test_real_io_still_works_on_the_virtual_loop() -> None:
    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        line = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()
        return line

    assert run_virtual(main()) == b"ping\n"


def test_time_cannot_go_backwards() -> None:
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(ValueError, match="backwards"):
            loop.advance(-1)
    finally:
        loop.close()


def test_wall_time_follows_only_the_loop_running_now() -> None:
    async def virtual() -> float:
        return wall_time()

    async def real() -> float:
        return wall_time()

    assert run_virtual(virtual(), wall_epoch=1000.0) == 1000.0
    # After the virtual loop stops, a real loop on the same thread reads the system clock.
    assert asyncio.run(real()) > 1_700_000_000.0


def test_the_clock_holds_while_another_thread_works() -> None:
    import threading

    from resilience.clock import thread_work

    async def main() -> tuple[float, str, float]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        release = threading.Event()

        def worker() -> None:
            release.wait()
            loop.call_soon_threadsafe(answer.set_result, "done")

        threading.Thread(target=worker).start()
        started = loop.time()
        ticker = asyncio.ensure_future(asyncio.sleep(3600))  # a timer that could be jumped to
        loop.call_later(0, release.set)
        with thread_work():
            result = await answer
        held_for = loop.time() - started
        ticker.cancel()
        executor_result = await loop.run_in_executor(None, sum, [1, 2, 3])
        return held_for, result, float(executor_result)

    held_for, result, total = run_virtual(main())
    assert result == "done"
    assert held_for == 0.0  # no virtual time passed while the thread worked
    assert total == 6.0
