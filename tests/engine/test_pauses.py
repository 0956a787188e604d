import gc

from qtts.engine.pauses import DurationHistogram, freeze_heap, gc_pauses


def test_durations_land_in_the_first_bucket_that_holds_them():
    histogram = DurationHistogram((0.01, 0.1))
    for seconds in (0.005, 0.01, 0.05, 0.2, 3.0):
        histogram.observe(seconds)
    snapshot = histogram.snapshot()
    assert snapshot["counts"] == [2, 1, 2]  # <= 10 ms, <= 100 ms, above
    assert snapshot["max"] == 3.0 and abs(snapshot["sum"] - 3.265) < 1e-12


def test_every_collection_is_timed():
    pauses = gc_pauses()
    before = sum(pauses.histogram.counts)
    gc.collect()
    gc.collect(0)
    assert sum(pauses.histogram.counts) == before + 2
    assert pauses.histogram.max > 0


class _Cycle:
    def __init__(self):
        self.me = self


def test_a_frozen_heap_leaves_old_objects_out_of_collections():
    freeze_heap()
    try:
        assert gc.get_freeze_count() > 0
        old = gc.get_freeze_count()
        _Cycle()  # garbage made after the freeze is still collected
        assert gc.collect() >= 1 and gc.get_freeze_count() == old
    finally:
        gc.unfreeze()
