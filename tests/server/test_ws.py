"""The websocket: incremental text in, audio per sentence out, errors, cancel and disconnect."""
import base64
import json
import time

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from qtts.server.ws import MAX_MESSAGE_BYTES, MAX_MESSAGE_CHARS
from tests.server.conftest import FAST, LiveServer, assert_same_audio


def send(ws, **message):
    ws.send(json.dumps(message))


def receive_json(ws, wanted=None):
    """The next JSON event (of type `wanted`, skipping audio and other events when given)."""
    while True:
        message = ws.recv(timeout=30)
        if isinstance(message, str):
            event = json.loads(message)
            if wanted is None or event["type"] == wanted:
                return event


def collect(ws):
    """Events and audio bytes per utterance until the server closes the session."""
    events, audio = [], {}
    current = None
    for message in ws:
        if isinstance(message, bytes):
            audio[current] = audio.get(current, b"") + message
            continue
        event = json.loads(message)
        events.append(event)
        if event["type"] == "audio.start":
            current = event["utterance"]
        elif event["type"] == "audio.delta":
            audio[event["utterance"]] = audio.get(event["utterance"], b"") + base64.b64decode(event["audio"])
    return events, audio


def http_pcm(server, text, speaker):
    response = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                          json={"input": text, "voice": speaker, "response_format": "pcm", **FAST})
    return response.content


@pytest.fixture(scope="module")
def speaker(custom_voice_tts):
    return custom_voice_tts.speakers[0]


@pytest.mark.parametrize("binary", [True, False])
def test_text_pieces_become_sentences_spoken_in_order(custom_voice_server, speaker, binary):
    with connect(custom_voice_server.ws_url) as ws:
        assert receive_json(ws)["type"] == "session.created"
        send(ws, type="session.update", voice=speaker, binary=binary, **FAST)
        assert receive_json(ws)["session"]["voice"] == speaker
        for piece in ["Hello", " there. How", " are you? Fine", " thanks"]:
            send(ws, type="input.text", text=piece)
        send(ws, type="input.done")
        events, audio = collect(ws)
        assert ws.close_code == 1000
    kinds = [e["type"] for e in events]
    assert kinds.count("audio.start") == 3 and kinds[-1] == "session.done"
    done = [e for e in events if e["type"] == "audio.done"]
    assert [e["text"] for e in done] == ["Hello there.", "How are you?", "Fine thanks"]
    assert [e["utterance"] for e in done] == [0, 1, 2]
    for event in done:
        assert_same_audio(http_pcm(custom_voice_server, event["text"], speaker), audio[event["utterance"]])


def test_bad_messages_get_errors_and_the_session_goes_on(custom_voice_server, speaker):
    with connect(custom_voice_server.ws_url) as ws:
        receive_json(ws)
        ws.send("not json")
        assert receive_json(ws)["type"] == "error"
        send(ws, type="dance")
        assert receive_json(ws)["error"]["param"] == "type"
        send(ws, type="session.update", voice="nobody")
        assert receive_json(ws)["error"]["param"] == "voice"
        send(ws, type="session.update", voice=speaker, temperature=-2)
        assert receive_json(ws)["error"]["param"] == "temperature"
        send(ws, type="input.text", text=42)
        assert receive_json(ws)["error"]["param"] == "text"
        ws.send(b"\x00binary")
        assert receive_json(ws)["type"] == "error"
        send(ws, type="session.update", voice=speaker, **FAST)
        receive_json(ws, "session.updated")
        send(ws, type="input.text", text="Still here.")
        send(ws, type="input.flush")
        assert receive_json(ws, "audio.done")["text"] == "Still here."


def test_cancel_stops_speaking_and_frees_the_slots(custom_voice_server, speaker):
    with connect(custom_voice_server.ws_url) as ws:
        receive_json(ws)
        send(ws, type="session.update", voice=speaker, max_frames=4000)
        receive_json(ws, "session.updated")
        send(ws, type="input.text", text="One long sentence. Another one. And more ")
        assert receive_json(ws, "audio.start")["utterance"] == 0
        send(ws, type="cancel")
        assert receive_json(ws, "cancelled")["utterances"] == [0, 1]
        custom_voice_server.wait_idle(timeout_s=5)
        send(ws, type="session.update", max_frames=4)
        receive_json(ws, "session.updated")
        send(ws, type="input.text", text="After the cancel. ")
        assert receive_json(ws, "audio.done")["utterance"] == 2


def test_disconnect_cancels_generation(custom_voice_server, speaker):
    with connect(custom_voice_server.ws_url) as ws:
        receive_json(ws)
        send(ws, type="session.update", voice=speaker, max_frames=4000)
        send(ws, type="input.text", text="Talking to nobody. Still talking. ")
        receive_json(ws, "audio.start")
    custom_voice_server.wait_idle(timeout_s=5)


def close_of(url, **options) -> tuple[int, str]:
    """The close code and reason of a session the server ends before saying anything."""
    with connect(url, **options) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_api_key_on_the_websocket(custom_voice_tts, tmp_path, speaker):
    server = LiveServer(custom_voice_tts, tmp_path, api_key="secret")
    try:
        assert close_of(server.ws_url) == (1008, "missing API key: send 'Authorization: Bearer KEY'")
        assert close_of(server.ws_url + "?api_key=wrong") == (1008, "incorrect API key")
        assert close_of(server.ws_url, additional_headers={"Authorization": "Bearer nope"})[0] == 1008
        with connect(server.ws_url + "?api_key=secret") as ws:
            assert receive_json(ws)["type"] == "session.created"
        with connect(server.ws_url, additional_headers={"Authorization": "Bearer secret"}) as ws:
            assert receive_json(ws)["type"] == "session.created"
    finally:
        server.close()


def test_websocket_pcm_is_16_bit_samples(custom_voice_server, speaker):
    with connect(custom_voice_server.ws_url) as ws:
        receive_json(ws)
        send(ws, type="session.update", voice=speaker, **FAST)
        send(ws, type="input.text", text="Samples.")
        send(ws, type="input.done")
        _, audio = collect(ws)
    samples = np.frombuffer(audio[0], "<i2")
    assert len(samples) % 1920 == 0 and 0 < len(samples) <= 8 * 1920


def test_frames_that_used_to_end_the_session_get_errors(custom_voice_server, speaker):
    with connect(custom_voice_server.ws_url, max_size=None) as ws:
        receive_json(ws)
        ws.send("[" * 5000)  # a RecursionError in the parser used to drop the connection with 1006
        assert receive_json(ws)["error"]["code"] == "invalid_message"
        send(ws, type="input.text", text="a" * (MAX_MESSAGE_CHARS + 1))
        assert receive_json(ws)["error"]["code"] == "message_too_large"
        send(ws, type="session.update", voice=speaker, **FAST)
        receive_json(ws, "session.updated")
        send(ws, type="input.text", text="\ud800 lone surrogate.\n")
        error = receive_json(ws, "error")
        assert error["error"]["type"] == "invalid_request_error" and "surrogate" in error["error"]["message"]
        send(ws, type="input.text", text="Still here.\n")
        assert receive_json(ws, "audio.done")["text"] == "Still here."
        ws.send("x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(ConnectionClosed):
            receive_json(ws)
    assert ws.close_code == 1009


def test_a_runaway_message_does_not_stall_other_clients(custom_voice_server):
    text = json.dumps({"type": "input.text", "text": "." * (MAX_MESSAGE_CHARS - 100)})
    with connect(custom_voice_server.ws_url) as ws, httpx.Client(base_url=custom_voice_server.url) as http:
        receive_json(ws)
        http.get("/health")
        ws.send(text)
        waits = []
        for _ in range(5):
            started = time.perf_counter()
            assert http.get("/health", timeout=10).status_code == 200
            waits.append(time.perf_counter() - started)
        send(ws, type="cancel")
        assert receive_json(ws)["type"] == "cancelled"  # the message was handled, not dropped
    assert max(waits) < 0.5


def test_stream_mode_speaks_from_the_first_words_and_equals_the_whole_text(custom_voice_server, custom_voice_tts,
                                                                           speaker):
    """text_mode "stream": no sentence wait, pieces join the utterance as they come, and the audio is the
    whole text's in streaming text mode; a flush ends an utterance and the next piece starts another."""
    texts = ["Hello there, how are you today? I am", "Second one, after a flush."]
    with connect(custom_voice_server.ws_url) as ws:
        receive_json(ws, "session.created")
        send(ws, type="session.update", voice=speaker, text_mode="stream", language="english", **FAST)
        assert receive_json(ws, "session.updated")["session"]["text_mode"] == "stream"
        pieces = [texts[0][:6], texts[0][6:20], texts[0][20:]]
        send(ws, type="input.text", text=pieces[0])
        assert receive_json(ws, "audio.start")["utterance"] == 0  # before any sentence ended
        for piece in pieces[1:]:
            send(ws, type="input.text", text=piece)
            time.sleep(0.05)
        send(ws, type="input.flush")
        send(ws, type="input.text", text=texts[1])
        send(ws, type="input.done")
        events, audio = collect(ws)
    audio[0] = audio.pop(None, b"") + audio.get(0, b"")  # bytes that came before collect() saw audio.start
    done = [e for e in events if e["type"] == "audio.done"]
    assert [e["text"] for e in done] == texts and events[-1]["type"] == "session.done"
    assert all(e["text_wait_s"] >= 0 for e in done)
    for number, text in enumerate(texts):
        request = custom_voice_tts.request(text, speaker=speaker, language="english", non_streaming_mode=False,
                                           **FAST)
        expected = (custom_voice_tts.generate(request).samples * 32767).round().astype("<i2").tobytes()
        assert_same_audio(expected, audio[number])
