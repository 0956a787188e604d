"""POST /v1/audio/speech through the official openai client and plain HTTP, on a real server."""
import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed

from tests.server.conftest import FAST, LiveServer, assert_same_audio, captured_logs

SAMPLES_PER_FRAME = 1920


@pytest.fixture(scope="module")
def client(custom_voice_server):
    return openai.OpenAI(base_url=custom_voice_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def speaker(custom_voice_tts):
    return custom_voice_tts.speakers[0]


def pcm(server, text, speaker):
    response = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                          json={"input": text, "voice": speaker, "response_format": "pcm", **FAST})
    assert response.status_code == 200, response.text
    return response.content


def test_openai_client_create_returns_a_wav(client, speaker):
    response = client.audio.speech.create(model="tts-1", voice=speaker.upper(), input="Hello there.",
                                          response_format="wav", extra_body=FAST)
    samples, sample_rate = sf.read(io.BytesIO(response.content), dtype="int16")
    assert sample_rate == 24000
    assert 0 < len(samples) <= 8 * SAMPLES_PER_FRAME and len(samples) % SAMPLES_PER_FRAME == 0


def test_openai_streaming_response_yields_the_same_audio(client, custom_voice_server, speaker):
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice=speaker, input="Streaming works.",
                                                            response_format="pcm", extra_body=FAST) as response:
        assert response.headers["content-type"] == "audio/pcm"
        pieces = list(response.iter_bytes())
    assert_same_audio(pcm(custom_voice_server, "Streaming works.", speaker), b"".join(pieces))


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_compressed_formats(client, speaker, fmt):
    import av

    audio = client.audio.speech.create(model="tts-1", voice=speaker, input="Hi.", response_format=fmt,
                                       extra_body=FAST).content
    with av.open(io.BytesIO(audio)) as container:
        assert sum(frame.samples for frame in container.decode(audio=0)) > 0


def test_min_frames_reaches_the_engine_and_forces_the_length(custom_voice_server, speaker, monkeypatch):
    submitted = []
    submit = custom_voice_server.engine.submit
    monkeypatch.setattr(custom_voice_server.engine, "submit",
                        lambda request, **kw: submitted.append(request) or submit(request, **kw))
    body = {"input": "Exactly this long.", "voice": speaker, "response_format": "pcm", "min_frames": 6,
            "max_frames": 6}
    response = httpx.post(custom_voice_server.url + "/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.content) == 2 * 6 * SAMPLES_PER_FRAME
    assert [(r.min_frames, r.max_frames) for r in submitted] == [(6, 6)]


def test_sse_events_carry_the_audio_and_usage(custom_voice_server, speaker):
    response = httpx.post(custom_voice_server.url + "/v1/audio/speech", timeout=60,
                          json={"input": "Events.", "voice": speaker, "response_format": "pcm",
                                "stream_format": "sse", **FAST})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert_same_audio(pcm(custom_voice_server, "Events.", speaker), audio)
    assert done["finish_reason"] == "length"  # FAST's max_frames, before the random weights ever stop
    usage = done["usage"]
    assert usage["output_tokens"] == len(audio) // (2 * SAMPLES_PER_FRAME)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["input_tokens"] > 0


def test_an_input_too_long_for_one_request_is_spoken_in_parts(tiny_custom_voice, tmp_path, speaker):
    from qtts.api import TTS

    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", max_len=256)
    text = " ".join(f"Sentence number {n} of a long input, read in parts." for n in range(70))
    request = tts.request(text, speaker=speaker, max_frames=8, greedy=True)
    expected = tts.generate(request)
    assert len(expected.parts) > 3 and len(text) <= 4096
    server = LiveServer(tts, tmp_path)
    try:
        url = server.url + "/v1/audio/speech"
        body = {"input": text, "voice": speaker, "response_format": "pcm", **FAST}
        audio = httpx.post(url, json=body, timeout=60)
        sse = httpx.post(url, json={**body, "stream_format": "sse"}, timeout=60)
        refused = httpx.post(url, json={"input": "Hi.", "voice": speaker, "instructions": "Slowly. " * 200}, timeout=60)
    finally:
        server.close()
    assert audio.status_code == 200
    assert_same_audio((expected.samples * 32767).round().astype("<i2").tobytes(), audio.content)
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert_same_audio(audio.content, b"".join(base64.b64decode(e["audio"]) for e in events[:-1]))
    assert events[-1]["finish_reason"] == "length" and events[-1]["usage"]["output_tokens"] == len(expected.codes)
    assert refused.status_code == 400 and "does not fit max_len=256" in refused.json()["error"]["message"]


def test_models_health_metrics_and_demo_page(custom_voice_server, client, speaker):
    assert [m.id for m in client.models.list().data] == ["tiny-custom-voice"]
    health = httpx.get(custom_voice_server.url + "/health", timeout=60)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    pcm(custom_voice_server, "Counted.", speaker)
    metrics = httpx.get(custom_voice_server.url + "/metrics", timeout=60).text
    for name in ("qtts_first_audio_seconds_count", "qtts_real_time_factor_count", "qtts_engine_queued",
                 "qtts_engine_active", "qtts_engine_frames_per_second", "qtts_prefix_cache_misses_total",
                 "qtts_prefix_cache_bytes", "qtts_engine_iteration_seconds_count",
                 'qtts_engine_gc_pause_seconds_bucket{le="0.05"}', "qtts_server_gc_pause_seconds_sum",
                 "qtts_server_loop_lag_seconds_count", "qtts_engine_text_speculation_rollbacks_total"):
        assert name in metrics
    assert 'qtts_requests_total{endpoint="/v1/audio/speech",status="200"}' in metrics
    page = httpx.get(custom_voice_server.url + "/", timeout=60)
    assert page.status_code == 200 and "/v1/audio/speech/stream" in page.text


BAD_REQUESTS = [
    # (description, json body or raw (content, content type), expected status, expected param)
    ("empty input", {"input": "  "}, 400, "input"),
    ("input over the limit", {"input": "a" * 4097}, 400, "input"),
    ("missing input", {}, 400, "input"),
    ("unknown voice", {"input": "Hi.", "voice": "nobody"}, 400, "voice"),
    ("no voice", {"input": "Hi.", "voice": None}, 400, "voice"),
    ("unsupported speed", {"input": "Hi.", "speed": 2.0}, 400, "speed"),
    ("speed out of range", {"input": "Hi.", "speed": 9.0}, 400, "speed"),
    ("unknown format", {"input": "Hi.", "response_format": "ogg"}, 400, "response_format"),
    ("unknown stream format", {"input": "Hi.", "stream_format": "chunks"}, 400, "stream_format"),
    ("unknown field", {"input": "Hi.", "temprature": 0.5}, 400, "temprature"),
    ("unknown language", {"input": "Hi.", "language": "klingon"}, 400, "language"),
    ("negative temperature", {"input": "Hi.", "temperature": -1}, 400, "temperature"),
    ("top_p of zero", {"input": "Hi.", "top_p": 0}, 400, "top_p"),
    ("max_frames of zero", {"input": "Hi.", "max_frames": 0}, 400, "max_frames"),
    ("negative min_frames", {"input": "Hi.", "min_frames": -1}, 400, "min_frames"),
    ("min_frames above max_frames", {"input": "Hi.", "min_frames": 9, "max_frames": 8}, 400, "min_frames"),
    ("not JSON", (b"{input:", "application/json"), 400, None),
    ("JSON that is not an object", (b"[1, 2]", "application/json"), 400, None),
    ("form body", (b"input=hi", "application/x-www-form-urlencoded"), 415, None),
    ("body too large", (b'{"input": "' + b"a" * 100_000 + b'"}', "application/json"), 413, None),
]


@pytest.mark.parametrize("description, body, status, param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_openai_errors(custom_voice_server, speaker, description, body, status, param):
    url = custom_voice_server.url + "/v1/audio/speech"
    if isinstance(body, dict):
        response = httpx.post(url, json={"voice": speaker, **body}, timeout=60)
    else:
        content, content_type = body
        response = httpx.post(url, content=content, headers={"content-type": content_type}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["param"] == param


def test_unknown_route_is_a_json_404(custom_voice_server):
    response = httpx.get(custom_voice_server.url + "/v1/nothing", timeout=60)
    assert response.status_code == 404 and response.json()["error"]["message"]


def test_api_key_is_required_when_set(custom_voice_tts, tmp_path, speaker):
    server = LiveServer(custom_voice_tts, tmp_path, api_key="secret")
    try:
        body = {"input": "Hi.", "voice": speaker, **FAST}
        assert httpx.post(server.url + "/v1/audio/speech", json=body, timeout=60).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(server.url + "/v1/audio/speech", json=body, headers=wrong, timeout=60).status_code == 401
        assert httpx.get(server.url + "/v1/voices", timeout=60).status_code == 401
        assert httpx.get(server.url + "/health", timeout=60).status_code == 200
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="secret", max_retries=0)
        assert client.audio.speech.create(model="m", voice=speaker, input="Hi.", extra_body=FAST).content
    finally:
        server.close()


def test_not_ready_is_503(custom_voice_tts, tmp_path, speaker):
    from fastapi.testclient import TestClient

    from qtts.server.app import create_app
    from qtts.server.state import ServerSettings

    client = TestClient(create_app(custom_voice_tts, ServerSettings(voices_dir=tmp_path)))  # lifespan not run
    assert client.get("/health").status_code == 503
    response = client.post("/v1/audio/speech", json={"input": "Hi.", "voice": speaker})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_engine_failure_is_a_500_and_the_server_lives_on(custom_voice_server, speaker, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated engine fault")

    monkeypatch.setattr(custom_voice_server.engine, "submit", broken)
    response = httpx.post(custom_voice_server.url + "/v1/audio/speech", json={"input": "Hi.", "voice": speaker},
                          timeout=60)
    assert response.status_code == 500 and "simulated engine fault" in response.json()["error"]["message"]
    monkeypatch.undo()
    assert pcm(custom_voice_server, "Still alive.", speaker)


def test_overload_is_429_with_retry_after(custom_voice_tts, tmp_path, speaker):
    server = LiveServer(custom_voice_tts, tmp_path, max_batch=1, max_queue=1)
    url = server.url + "/v1/audio/speech"
    long = {"input": "A long one.", "voice": speaker, "response_format": "pcm", "max_frames": 4000}

    def first_chunk_status():
        with httpx.stream("POST", url, json=long, timeout=60) as response:
            chunks = response.iter_raw()  # kept: a dropped iterator closes the response
            next(chunks)
            return response.status_code

    try:
        with ThreadPoolExecutor(1) as pool:
            with httpx.stream("POST", url, json=long, timeout=60) as running:
                chunks = running.iter_raw()
                next(chunks)
                waiting = pool.submit(first_chunk_status)
                deadline = time.monotonic() + 10
                while server.engine.stats()["queued"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                rejected = httpx.post(url, json=long, timeout=60)
                assert rejected.status_code == 429 and rejected.headers["retry-after"] == "1"
                assert rejected.json()["error"]["type"] == "rate_limit_error"
            assert waiting.result(timeout=30) == 200  # the queued request got the freed row
        server.wait_idle()
    finally:
        server.close()


def test_client_disconnect_cancels_its_stream(custom_voice_server, speaker):
    body = {"input": "Nobody listens to this.", "voice": speaker, "response_format": "pcm", "max_frames": 4000}
    with httpx.Client(base_url=custom_voice_server.url, timeout=60) as http:
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            chunks = response.iter_raw()  # kept: a dropped iterator closes the response
            next(chunks)
            assert custom_voice_server.engine.stats()["active"] == 1
    started = time.monotonic()
    custom_voice_server.wait_idle(timeout_s=5)
    assert time.monotonic() - started < 5
    metrics = httpx.get(custom_voice_server.url + "/metrics", timeout=60).text
    assert 'qtts_requests_total{endpoint="/v1/audio/speech",status="499"}' in metrics


def test_concurrent_greedy_requests_equal_their_solo_results(custom_voice_server, speaker):
    texts = ["The first sentence.", "A second, different one!", "Number three?", "And a fourth."]
    solo = [pcm(custom_voice_server, text, speaker) for text in texts]
    with ThreadPoolExecutor(len(texts)) as pool:
        together = list(pool.map(lambda text: pcm(custom_voice_server, text, speaker), texts))
    for alone, batched in zip(solo, together):
        assert_same_audio(alone, batched)


def test_an_engine_process_serves_the_same_audio(custom_voice_server, tiny_custom_voice, tmp_path, speaker):
    from qtts.api import TTS

    front = TTS.from_pretrained(tiny_custom_voice, device="cpu", generator=False)
    server = LiveServer(front, tmp_path, engine_process=True, max_batch=4, max_queue=5)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice=speaker, input="Hello there.", response_format="pcm", extra_body=FAST) as response:
            streamed = b"".join(response.iter_bytes())
        assert_same_audio(pcm(custom_voice_server, "Hello there.", speaker), streamed)
        health = httpx.get(server.url + "/health").json()
        assert health["status"] == "ready" and health["max_batch"] == 4
        with captured_logs("qtts", "uvicorn") as records:
            outcomes = _streams_cut_by_an_engine_death(server, speaker)
        assert outcomes == {"audio": "incomplete body", "sse": "engine_unavailable"}
        finished = [r.getMessage() for r in records if "status=" in r.getMessage()]
        assert len(finished) == 2 and all("status=503" in line for line in finished), finished
        assert not [r for r in records if r.exc_info], "no tracebacks for an engine that died"
        deadline = time.monotonic() + 10  # counted once each handler has returned
        while 'qtts_requests_total{endpoint="/v1/audio/speech",status="503"} 2.0' not in (
                metrics := httpx.get(server.url + "/metrics", timeout=60).text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
        assert 'status="500"' not in metrics
        assert httpx.get(server.url + "/health").status_code == 503
        response = httpx.post(server.url + "/v1/audio/speech", timeout=30,
                              json={"input": "Hello.", "voice": speaker, "response_format": "pcm", **FAST})
        assert response.status_code == 503 and response.json()["error"]["code"] == "engine_unavailable"
        deadline = time.monotonic() + 60  # a new engine process takes over
        while httpx.get(server.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "the engine process was not restarted"
            time.sleep(0.1)
        assert_same_audio(streamed, pcm(server, "Hello there.", speaker))
        while "iteration_seconds" not in server.engine.stats():  # a report from the new engine process
            time.sleep(0.05)
        assert httpx.get(server.url + "/health").json()["max_queue"] == 5
    finally:
        server.close()
    assert server.engine._process is None  # the engine process ended with the server


def _streams_cut_by_an_engine_death(server, speaker) -> dict:
    """Kill the engine process while an audio and an SSE stream run; what each client saw."""
    body = {"input": "A long one.", "voice": speaker, "response_format": "pcm", "max_frames": 4000,
            "min_frames": 4000}
    outcomes = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/audio/speech", json=body) as audio, \
                http.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as sse:
            audio_chunks, sse_lines = audio.iter_raw(), sse.iter_lines()
            next(audio_chunks)
            next(sse_lines)
            server.engine._process.kill()
            try:
                for _ in audio_chunks:
                    pass
            except httpx.RemoteProtocolError:
                outcomes["audio"] = "incomplete body"
            events = [json.loads(line[6:]) for line in sse_lines if line.startswith("data: ")]
            outcomes["sse"] = events[-1]["error"]["code"] if events[-1]["type"] == "error" else events[-1]["type"]
    return outcomes


def test_shutdown_lets_streams_run_then_ends_them_with_errors(custom_voice_tts, tmp_path, speaker):
    from websockets.sync.client import connect

    grace_s = 1.0
    server = LiveServer(custom_voice_tts, tmp_path, shutdown_grace_s=grace_s)
    body = {"input": "A long one.", "voice": speaker, "response_format": "pcm", "max_frames": 4000,
            "min_frames": 4000, "stream_format": "sse"}
    closer = threading.Thread(target=server.close)
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=30) as sse, \
            connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "session.update", "voice": speaker, "max_frames": 4000, "min_frames": 4000}))
        ws.send(json.dumps({"type": "input.text", "text": "Talking through the shutdown.\n"}))
        lines = sse.iter_lines()
        next(lines)
        closer.start()  # as SIGTERM does
        began = time.monotonic()
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        ended_s = time.monotonic() - began
        ws_events = []
        with pytest.raises(ConnectionClosed):
            while True:
                message = ws.recv(timeout=10)
                if isinstance(message, str):
                    ws_events.append(json.loads(message))
    closer.join(30)
    assert len(events) >= 3 and events[-1]["type"] == "error"  # audio went on, then a proper end
    assert events[-1]["error"]["code"] == "shutting_down" and grace_s - 0.2 < ended_s < grace_s + 3
    assert [e["error"]["code"] for e in ws_events if e["type"] == "error"] == ["shutting_down"]
    assert ws.close_code == 1012
    metrics = server.app.state.qtts.metrics.render()[0].decode()
    assert 'qtts_requests_total{endpoint="/v1/audio/speech",status="503"} 1.0' in metrics
    assert 'qtts_requests_total{endpoint="/v1/audio/speech/stream",status="503"} 1.0' in metrics


def test_a_stalled_request_body_gets_408(custom_voice_tts, tmp_path):
    server = LiveServer(custom_voice_tts, tmp_path, body_timeout_s=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"input\": ")  # and then nothing
            reply = b""
            while chunk := raw.recv(4096):  # until the server closes the connection
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["code"] == "body_timeout"
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        server.close()


def test_api_keys_in_query_strings_are_redacted_in_logs(custom_voice_tts, tmp_path):
    from websockets.sync.client import connect

    server = LiveServer(custom_voice_tts, tmp_path, api_key="secret-value", log_level="info")
    try:
        with captured_logs("uvicorn", "uvicorn.access", "qtts") as records:
            with connect(server.ws_url + "?api_key=secret-value&x=1") as ws:
                assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
            httpx.get(server.url + "/v1/models?api_key=secret-value", timeout=10)
        lines = [record.getMessage() for record in records]
        assert any("api_key=***&x=1" in line for line in lines), lines
        assert any("/v1/models?api_key=***" in line for line in lines), lines
        assert not any("secret-value" in line for line in lines)
    finally:
        server.close()
