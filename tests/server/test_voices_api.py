"""Clone voices over HTTP on a Base model (surviving a restart), and VoiceDesign through `instructions`."""
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from qtts.api import TTS
from tests.server.conftest import FAST, LiveServer, silent_flac


def reference_wav(seconds=1.5, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wav = sum(rng.random() * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, 5))
    buffer = io.BytesIO()
    sf.write(buffer, (0.5 * wav / np.abs(wav).max()).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def upload(server, name, audio=None, transcript=None, content_type="audio/wav"):
    data = {"name": name} if transcript is None else {"name": name, "transcript": transcript}
    files = {"audio": ("reference.wav", reference_wav() if audio is None else audio, content_type)}
    return httpx.post(server.url + "/v1/voices", data=data, files=files, timeout=60)


def speak(server, voice):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    return client.audio.speech.create(model="m", voice=voice, input="Cloned speech.", response_format="pcm",
                                      extra_body=FAST).content


@pytest.fixture(scope="module")
def base_tts(tiny_base):
    return TTS.from_pretrained(tiny_base, device="cpu")


def test_voices_are_created_used_and_survive_a_restart(base_tts, tmp_path):
    server = LiveServer(base_tts, tmp_path)
    try:
        created = upload(server, "Alice", transcript="The words of the reference.")
        assert created.status_code == 201, created.text
        alice = created.json()
        assert alice["name"] == "Alice" and alice["icl"] and alice["id"].startswith("voice_")
        plain = upload(server, "Bob").json()
        assert plain["icl"] is False
        assert [v["name"] for v in httpx.get(server.url + "/v1/voices", timeout=60).json()["data"]] == ["Alice", "Bob"]
        by_name, by_id = speak(server, "alice"), speak(server, alice["id"])
        assert len(by_name) > 0 and by_name == by_id
        ref_body = {"input": "Cloned speech.", "voice": {"id": plain["id"]}, "response_format": "pcm", **FAST}
        assert httpx.post(server.url + "/v1/audio/speech", json=ref_body, timeout=60).status_code == 200
    finally:
        server.close()

    restarted = LiveServer(base_tts, tmp_path)
    try:
        assert httpx.get(f"{restarted.url}/v1/voices/{alice['id']}", timeout=60).json() == alice
        assert speak(restarted, "Alice") == by_name
        deleted = httpx.delete(f"{restarted.url}/v1/voices/{alice['id']}", timeout=60)
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert httpx.get(f"{restarted.url}/v1/voices/{alice['id']}", timeout=60).status_code == 404
        missing = httpx.post(restarted.url + "/v1/audio/speech", json={"input": "Hi.", "voice": "Alice"}, timeout=60)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "voice"
    finally:
        restarted.close()


def test_bad_uploads(base_tts, tmp_path):
    server = LiveServer(base_tts, tmp_path, max_upload_bytes=200_000, max_upload_seconds=3)
    try:
        assert upload(server, "Taken").status_code == 201
        cases = [
            (upload(server, "Taken"), 409, "name"),
            (upload(server, ""), 400, "name"),
            (upload(server, "x" * 65), 400, "name"),
            (upload(server, "Text", audio=b"hello", content_type="text/plain"), 415, "audio"),
            (upload(server, "Junk", audio=b"not audio at all"), 422, "audio"),
            (upload(server, "Short", audio=reference_wav(seconds=0.2)), 422, "audio"),
            (upload(server, "Long", audio=reference_wav(seconds=4)), 413, "audio"),
            (upload(server, "Huge", audio=b"\0" * 300_000), 413, "audio"),
            (httpx.post(server.url + "/v1/voices", files={"name": (None, "NoFile")}, timeout=60), 400, "audio"),
            (httpx.post(server.url + "/v1/voices", data={"name": "Urlencoded"}, timeout=60), 415, None),
            (httpx.post(server.url + "/v1/voices", json={"name": "x"}, timeout=60), 415, None),
            (httpx.delete(server.url + "/v1/voices/voice_0000000000000000", timeout=60), 404, "voice_id"),
            (httpx.post(server.url + "/v1/audio/speech", json={"input": "Hi."}, timeout=60), 400, "voice"),
        ]
        for response, status, param in cases:
            assert response.status_code == status, response.text
            assert response.json()["error"]["param"] == param
        assert [v["name"] for v in httpx.get(server.url + "/v1/voices", timeout=60).json()["data"]] == ["Taken"]
    finally:
        server.close()


def test_builtin_voices_are_listed_and_cloning_needs_a_base_model(custom_voice_server, custom_voice_tts):
    voices = httpx.get(custom_voice_server.url + "/v1/voices", timeout=60).json()["data"]
    assert [v["id"] for v in voices] == custom_voice_tts.speakers and {v["type"] for v in voices} == {"builtin"}
    speaker = custom_voice_tts.speakers[0]
    assert httpx.get(f"{custom_voice_server.url}/v1/voices/{speaker.upper()}", timeout=60).json()["type"] == "builtin"
    assert httpx.delete(f"{custom_voice_server.url}/v1/voices/{speaker}", timeout=60).status_code == 400
    assert upload(custom_voice_server, "Nope").status_code == 400


def test_voice_design_takes_the_voice_from_instructions(tiny_voice_design, tmp_path):
    server = LiveServer(TTS.from_pretrained(tiny_voice_design, device="cpu"), tmp_path)
    try:
        url = server.url + "/v1/audio/speech"
        missing = httpx.post(url, json={"input": "Hi.", "voice": "alloy", **FAST}, timeout=60)
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "instructions"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        audio = client.audio.speech.create(model="m", voice="alloy", input="Designed.", response_format="pcm",
                                           instructions="A calm, low voice.", extra_body=FAST).content
        assert len(audio) > 0
    finally:
        server.close()


@pytest.fixture(scope="module")
def base_server(base_tts, tmp_path_factory):
    server = LiveServer(base_tts, tmp_path_factory.mktemp("voices"))
    yield server
    server.close()


def test_a_decode_bomb_is_refused_from_its_header(base_server):
    bomb = silent_flac(1.0, 96000, 8, claimed_seconds=1300)  # 1 kB claiming 1,300 s of 8-channel 96 kHz
    response = upload(base_server, "Bomb", audio=bomb, content_type="audio/flac")
    assert response.status_code == 413, response.text
    assert "1300.0 s" in response.json()["error"]["message"] and response.json()["error"]["param"] == "audio"
    assert httpx.get(base_server.url + "/health", timeout=10).status_code == 200


def test_uploads_are_decoded_a_few_at_a_time(base_server, monkeypatch):
    from qtts import audio as audio_io
    from qtts.server.state import MAX_CONCURRENT_DECODES

    load_audio, running, most = audio_io.load_audio, [0], [0]

    def slow_load(*args, **kwargs):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.3)
        running[0] -= 1
        return load_audio(*args, **kwargs)

    monkeypatch.setattr(audio_io, "load_audio", slow_load)
    with ThreadPoolExecutor(5) as pool:
        statuses = list(pool.map(lambda n: upload(base_server, f"Quiet {n}", audio=b"\0" * 1000).status_code,
                                 range(5)))
    assert statuses == [422] * 5 and most[0] == MAX_CONCURRENT_DECODES


def test_a_damaged_voice_file_is_named_and_marked(base_tts, tmp_path):
    server = LiveServer(base_tts, tmp_path)
    try:
        voice = upload(server, "Fragile").json()
    finally:
        server.close()
    path = tmp_path / f"{voice['id']}.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    server = LiveServer(base_tts, tmp_path)
    try:
        spoken = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                            json={"input": "Hi.", "voice": "fragile", "response_format": "pcm", **FAST})
        assert spoken.status_code == 410, spoken.text
        error = spoken.json()["error"]
        assert error["code"] == "voice_damaged" and "'Fragile'" in error["message"] and voice["id"] in error["message"]
        assert httpx.get(f"{server.url}/v1/voices/{voice['id']}", timeout=60).status_code == 410
        listed = {v["id"]: v for v in httpx.get(server.url + "/v1/voices", timeout=60).json()["data"]}
        assert listed[voice["id"]]["status"] == "damaged"
        assert httpx.delete(f"{server.url}/v1/voices/{voice['id']}", timeout=60).status_code == 200
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        server.close()


@pytest.mark.parametrize("name", ["a/b", "VOICE_x", "Voice_1", "tab\there"])
def test_names_that_could_not_be_reached_are_refused(base_server, name):
    response = upload(base_server, name)
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


def test_a_name_that_is_not_utf8_is_refused_not_garbled(base_server):
    boundary = "qttsboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n".encode() + b"Caf\xe9\r\n"
            + f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"r.wav\"\r\n"
              "Content-Type: audio/wav\r\n\r\n".encode() + reference_wav() + f"\r\n--{boundary}--\r\n".encode())
    response = httpx.post(base_server.url + "/v1/voices", content=body, timeout=60,
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400 and "utf-8" in response.json()["error"]["message"]
    assert "Caf" not in str(httpx.get(base_server.url + "/v1/voices", timeout=60).json())
