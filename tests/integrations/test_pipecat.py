"""Real Pipecat pipelines (text frames in, audio frames out) against a real qtts server on tiny checkpoints."""
import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("pipecat", reason="needs the pipecat extra: pip install 'qtts[pipecat]'")

from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame, InterruptionFrame, LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame, TTSAudioRawFrame,
    TTSSpeakFrame, TTSStartedFrame, TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.processors.frame_processor import FrameProcessor  # noqa: E402
from pipecat.services.openai.tts import OpenAITTSService  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from qtts.api import TTS  # noqa: E402
from qtts.integrations.pipecat import QttsTTSService  # noqa: E402
from qtts.testing.ports import free_port  # noqa: E402
from tests.server.conftest import FAST, LiveServer, assert_same_audio  # noqa: E402

SAMPLES_PER_FRAME = 1920


@pytest.fixture(scope="module")
def custom_voice_server(tiny_custom_voice, tmp_path_factory):
    server = LiveServer(TTS.from_pretrained(tiny_custom_voice, device="cpu"), tmp_path_factory.mktemp("voices"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def speaker(custom_voice_server):
    return custom_voice_server.app.state.qtts.tts.speakers[0]


def reply(*tokens: str) -> list:
    """An LLM reply as Pipecat's LLM services push it: start, one frame per token, end."""
    return [LLMFullResponseStartFrame(), *(LLMTextFrame(token) for token in tokens), LLMFullResponseEndFrame()]


def run(service, frames) -> list:
    downstream, _ = asyncio.run(run_test(service, frames_to_send=frames, start_timeout=10))
    return downstream


def audio_of(frames) -> bytes:
    return b"".join(frame.audio for frame in frames if isinstance(frame, TTSAudioRawFrame))


def http_pcm(server, text: str, **body) -> bytes:
    response = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                          json={"input": text, "response_format": "pcm", **body})
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.slow  # the OpenAI API has no max_frames: the tiny model babbles to the 6 s cap
def test_pipecats_openai_service_speaks_through_qtts_unchanged(tiny_voice_design, tmp_path):
    """Pipecat's OpenAI service only takes OpenAI's voice names, which a VoiceDesign model ignores (its voice
    comes from the instructions); a CustomVoice model would refuse "alloy"."""
    server = LiveServer(TTS.from_pretrained(tiny_voice_design, device="cpu"), tmp_path)
    try:
        service = OpenAITTSService(api_key="unused", base_url=server.url + "/v1",
                                   settings=OpenAITTSService.Settings(voice="alloy", instructions="A calm voice."))
        frames = run(service, reply("Hi", "."))
        server.wait_idle()
    finally:
        server.close()
    audio = [frame for frame in frames if isinstance(frame, TTSAudioRawFrame)]
    assert audio and all(frame.sample_rate == 24000 and frame.num_channels == 1 for frame in audio)
    samples = np.frombuffer(audio_of(audio), "<i2")
    assert len(samples) % SAMPLES_PER_FRAME == 0 and np.abs(samples).max() > 0
    kinds = [type(frame) for frame in frames]
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame) < kinds.index(TTSStoppedFrame)


def test_llm_tokens_stream_to_qtts_and_its_audio_comes_back(custom_voice_server, speaker):
    service = QttsTTSService(url=custom_voice_server.ws_url, options=FAST,
                             settings=QttsTTSService.Settings(voice=speaker, language="en"))
    frames = run(service, reply("Hello", " there", ".", " How", " are", " you", "?"))
    # The server speaks each sentence as it completes, so the reply is the two sentences' audio in order.
    expected = b"".join(http_pcm(custom_voice_server, text, voice=speaker, language="en", **FAST)
                        for text in ["Hello there.", "How are you?"])
    assert_same_audio(expected, audio_of(frames))
    kinds = [type(frame) for frame in frames]
    assert kinds.count(TTSStartedFrame) == kinds.count(TTSStoppedFrame) == 1
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame) < kinds.index(TTSStoppedFrame)
    custom_voice_server.wait_idle()


def test_in_stream_text_mode_the_reply_speaks_as_one_text_written_token_by_token(custom_voice_server, speaker):
    """text_mode "stream": no sentence wait; the reply's audio is the whole reply in streaming text mode."""
    service = QttsTTSService(url=custom_voice_server.ws_url, options=FAST, text_mode="stream",
                             settings=QttsTTSService.Settings(voice=speaker, language="en"))
    tokens = ("Hello", " there", ".", " How", " are", " you", "?")
    frames = run(service, reply(*tokens))
    tts = custom_voice_server.app.state.qtts.tts
    whole = tts.generate(tts.request("".join(tokens), speaker=speaker, language="english", non_streaming_mode=False,
                                     **FAST))
    assert_same_audio((whole.samples * 32767).round().astype("<i2").tobytes(), audio_of(frames))
    custom_voice_server.wait_idle()


def test_each_reply_and_speak_frame_gets_its_own_audio(custom_voice_server, speaker):
    service = QttsTTSService(url=custom_voice_server.ws_url, options=FAST,
                             settings=QttsTTSService.Settings(voice=speaker))
    frames = run(service, [TTSSpeakFrame("One moment."), *reply("Done", ".")])
    stops = [i for i, frame in enumerate(frames) if isinstance(frame, TTSStoppedFrame)]
    assert len(stops) == 2
    first, second = audio_of(frames[:stops[0]]), audio_of(frames[stops[0]:])
    assert_same_audio(http_pcm(custom_voice_server, "One moment.", voice=speaker, **FAST), first)
    assert_same_audio(http_pcm(custom_voice_server, "Done.", voice=speaker, **FAST), second)


class InterruptionClock(FrameProcessor):
    """Notes when an interruption passes on its way to the TTS service."""

    def __init__(self):
        super().__init__()
        self.interrupted_at = None

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.interrupted_at = time.monotonic()
        await self.push_frame(frame, direction)


def test_an_interruption_stops_the_generation_at_once(custom_voice_server, speaker):
    busy: list[tuple[float, int]] = []  # (time, streams the engine is generating or has queued)
    done = threading.Event()

    def watch_engine():
        while not done.is_set():
            stats = custom_voice_server.engine.stats()
            busy.append((time.monotonic(), stats["active"] + stats["queued"]))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_engine, daemon=True)
    watcher.start()
    clock = InterruptionClock()
    service = QttsTTSService(url=custom_voice_server.ws_url, options={"max_frames": 40, "greedy": True},
                             settings=QttsTTSService.Settings(voice=speaker))
    long_reply = reply(*[f" Sentence number {n} keeps going." for n in range(6)])[:-1]  # still being written
    try:
        frames = run(Pipeline([clock, service]),
                     [*long_reply, SleepFrame(1.0), InterruptionFrame(), SleepFrame(1.5), *reply("Okay", ".")])
    finally:
        done.set()
        watcher.join()
    assert any(streams for moment, streams in busy if moment < clock.interrupted_at)
    assert not any(streams for moment, streams in busy if clock.interrupted_at + 0.5 < moment < clock.interrupted_at + 1.5)
    okay = http_pcm(custom_voice_server, "Okay.", voice=speaker, max_frames=40, greedy=True)
    assert_same_audio(okay, audio_of(frames)[-len(okay):])
    assert len(audio_of(frames)) < 6 * 40 * SAMPLES_PER_FRAME * 2  # the long reply was cut short


def test_server_errors_reach_the_pipeline(custom_voice_server):
    service = QttsTTSService(url=custom_voice_server.ws_url, options=FAST,
                             settings=QttsTTSService.Settings(voice="nobody"))
    _, upstream = asyncio.run(run_test(service, frames_to_send=reply("Hello", "."), start_timeout=10))
    errors = [frame.error for frame in upstream if isinstance(frame, ErrorFrame)]
    assert any("unknown voice 'nobody'" in error for error in errors), errors


def test_an_unreachable_server_is_an_error_not_a_hang():
    url = f"ws://127.0.0.1:{free_port()}/v1/audio/speech/stream"  # a port nothing listens on
    _, upstream = asyncio.run(run_test(QttsTTSService(url=url), frames_to_send=reply("Hello", "."), start_timeout=10))
    assert any("cannot reach the qtts server" in frame.error for frame in upstream if isinstance(frame, ErrorFrame))
