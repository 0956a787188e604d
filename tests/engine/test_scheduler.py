"""The scheduler admits first come, first served within its caps and sends the hungriest stream's chunk first."""
import pytest

from qtts.engine.scheduler import NOT_STARTED, ChunkCandidate, Scheduler, playback_buffer_s


def test_playback_buffer_is_audio_sent_minus_time_played():
    assert playback_buffer_s(2.0, first_chunk_at=10.0, now=10.5) == pytest.approx(1.5)
    assert playback_buffer_s(0.5, first_chunk_at=10.0, now=11.0) == pytest.approx(-0.5)  # underrun
    assert playback_buffer_s(0.0, first_chunk_at=None, now=11.0) == NOT_STARTED


def test_admissions_respect_free_rows_and_the_prefill_cap():
    scheduler = Scheduler(max_batch=8, max_prefills_per_frame=2, low_buffer_s=0.2, burst_prefills_per_frame=4,
                          high_buffer_s=1.0)
    assert scheduler.admissions(waiting=5, active=0, lowest_buffer_s=0.5) == 2
    assert scheduler.admissions(waiting=5, active=7, lowest_buffer_s=0.5) == 1
    assert scheduler.admissions(waiting=5, active=8, lowest_buffer_s=0.5) == 0
    assert scheduler.admissions(waiting=0, active=0, lowest_buffer_s=0.5) == 0


def test_a_burst_is_admitted_faster_while_every_listener_has_audio_in_hand():
    scheduler = Scheduler(max_batch=8, max_prefills_per_frame=2, low_buffer_s=0.2, burst_prefills_per_frame=4,
                          high_buffer_s=1.0)
    assert scheduler.admissions(waiting=6, active=0, lowest_buffer_s=None) == 4  # nobody plays yet
    assert scheduler.admissions(waiting=6, active=2, lowest_buffer_s=1.5) == 4
    assert scheduler.admissions(waiting=6, active=6, lowest_buffer_s=1.5) == 2  # free rows still bound it
    # a stream still waiting for its first chunk comes first: one prefill
    assert scheduler.admissions(waiting=6, active=2, lowest_buffer_s=NOT_STARTED) == 1
    assert Scheduler(max_batch=8, max_prefills_per_frame=3).burst_prefills_per_frame == 6


def test_a_stream_running_dry_limits_prefills_to_one_per_frame():
    scheduler = Scheduler(max_batch=8, max_prefills_per_frame=3, low_buffer_s=0.2)
    assert scheduler.admissions(waiting=5, active=2, lowest_buffer_s=0.05) == 1


def test_chunks_are_picked_new_streams_first_then_by_lowest_buffer():
    candidates = [ChunkCandidate("comfortable", 1.5, due=True),
                  ChunkCandidate("new", NOT_STARTED, due=True),
                  ChunkCandidate("not due", -1.0, due=False),
                  ChunkCandidate("hungry", 0.1, due=True)]
    picked = [c.stream for c in Scheduler(max_batch=4).pick_chunks(candidates)]
    assert picked == ["new", "hungry", "comfortable"]


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        Scheduler(max_batch=0)
    with pytest.raises(ValueError):
        Scheduler(max_batch=2, max_prefills_per_frame=0)


def test_a_zero_low_buffer_turns_the_one_prefill_rule_off():
    scheduler = Scheduler(max_batch=8, max_prefills_per_frame=2, low_buffer_s=0)
    assert scheduler.admissions(waiting=5, active=3, lowest_buffer_s=NOT_STARTED) == 2
    assert scheduler.admissions(waiting=5, active=3, lowest_buffer_s=0.01) == 2
