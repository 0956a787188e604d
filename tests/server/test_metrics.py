import asyncio
import time

from qtts.engine.pauses import DurationHistogram
from qtts.server.metrics import watch_loop_lag


def test_a_blocked_event_loop_shows_as_lag():
    histogram = DurationHistogram((0.02, 1.0))

    async def run() -> None:
        watcher = asyncio.create_task(watch_loop_lag(histogram, period_s=0.005))
        await asyncio.sleep(0.05)  # a few undisturbed periods
        time.sleep(0.1)  # something holds the loop
        await asyncio.sleep(0.02)
        watcher.cancel()

    asyncio.run(run())
    assert histogram.counts[1] >= 1 and histogram.max >= 0.05  # the held period, late by ~0.1 s
    assert histogram.counts[0] >= 3  # the others, on time within 20 ms
