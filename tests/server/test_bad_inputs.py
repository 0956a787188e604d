"""The probe's categories as a table: hundreds of bad inputs, each answered with a 4xx and a JSON error
(or an in-band websocket error), each leaving a healthy server. Two servers for the whole table: a
CustomVoice one for speech, a Base one for voice uploads, both with an API key."""
import base64
import io
import json
import math

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from qtts.api import TTS
from qtts.server.ws import MAX_MESSAGE_CHARS
from tests.server.conftest import FAST, LiveServer, silent_flac

KEY = "probe-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENT_ERRORS = {"invalid_request_error", "authentication_error", "not_found_error", "rate_limit_error"}

NUMERIC_FIELDS = ["temperature", "top_k", "top_p", "repetition_penalty", "subtalker_temperature", "subtalker_top_k",
                  "subtalker_top_p", "seed", "max_frames", "min_frames", "speed"]
BAD_NUMBERS = [1e308, -1e308, 1e300, 2**63, 2**64, -(2**63) - 1, math.nan, math.inf, -math.inf, "abc", [1], {"v": 1}]
STRING_FIELDS = ["input", "instructions", "voice", "language", "model", "response_format", "stream_format"]
BAD_STRINGS = ["\ud800", "\udfff", "a\udc00\ud800b", 42, 4.5, [], {"x": 1}, True]


def _body_cases() -> list[tuple[str, dict]]:
    """(id, fields over a valid body) for every field that can be wrong."""
    cases = [(f"{name}={value!r}", {name: value}) for name in NUMERIC_FIELDS for value in BAD_NUMBERS]
    cases += [(f"{name}={value!r}", {name: value}) for name in STRING_FIELDS for value in BAD_STRINGS]
    cases += [
        ("input over the limit", {"input": "a" * 4097}), ("instructions of 20001 chars", {"instructions": "a" * 20001}),
        ("empty input", {"input": ""}), ("blank input", {"input": " \n\t "}), ("no voice", {"voice": None}),
        ("unknown voice", {"voice": "nobody"}), ("long unknown voice", {"voice": "x" * 10_000}),
        ("voice id of a number", {"voice": {"id": 5}}), ("voice id surrogate", {"voice": {"id": "\ud800"}}),
        ("unknown voice id", {"voice": {"id": "nobody"}}), ("voice object with name", {"voice": {"name": "aiden"}}),
        ("voice object extra", {"voice": {"id": "aiden", "extra": 1}}), ("unknown language", {"language": "klingon"}),
        ("speed 2", {"speed": 2.0}), ("speed 0.1", {"speed": 0.1}), ("min above max", {"min_frames": 9, "max_frames": 8}),
        ("unknown field", {"temprature": 0.5}), ("negative top_k", {"top_k": -1}), ("top_p 0", {"top_p": 0}),
        ("negative temperature", {"temperature": -0.1}), ("zero penalty", {"repetition_penalty": 0}),
        ("greedy string", {"greedy": "maybe"}), ("format ogg", {"response_format": "ogg"}),
        ("format uppercase", {"response_format": "WAV"}), ("stream chunks", {"stream_format": "chunks"}),
    ]
    return cases


RAW_BODIES = [  # (id, body bytes, content type)
    ("empty body", b"", "application/json"), ("null", b"null", "application/json"), ("array", b"[]", "application/json"),
    ("number", b"1", "application/json"), ("string", b'"Hi."', "application/json"), ("true", b"true", "application/json"),
    ("NaN", b"NaN", "application/json"), ("unclosed", b"{", "application/json"),
    ("missing value", b'{"input": }', "application/json"), ("single quotes", b"{'input': 'Hi.'}", "application/json"),
    ("5000 [", b"[" * 5000, "application/json"), ("5000 objects", b'{"a":' * 5000, "application/json"),
    ("nested closed", b"[" * 900 + b"]" * 900, "application/json"),
    ("deep voice", b'{"input": "Hi.", "voice": ' + b"[" * 500 + b"]" * 500 + b"}", "application/json"),
    ("100k [", b"[" * 100_000, "application/json"), ("invalid UTF-8", b'{"input": "\xff\xfe"}', "application/json"),
    ("duplicate key", b'{"input": "Hi.", "voice": "aiden", "input": 5}', "application/json"),
    ("text/plain", b'{"input": "Hi."}', "text/plain"), ("no content type", b'{"input": "Hi."}', ""),
    ("form", b"input=Hi.", "application/x-www-form-urlencoded"), ("multipart", b"--x--", "multipart/form-data"),
]
PATHS = [("GET", "/v1/nothing"), ("PUT", "/v1/audio/speech"), ("GET", "/v1/audio/speech"),
         ("GET", "/v1/voices/%ED%A0%80"), ("GET", "/v1/voices/..%2F..%2Fetc"), ("DELETE", "/v1/voices/%00"),
         ("GET", "/v1/voices/voice_0000000000000000"), ("DELETE", "/v1/voices/aiden")]
ENDPOINTS = [("POST", "/v1/audio/speech"), ("GET", "/v1/models"), ("GET", "/v1/voices"), ("POST", "/v1/voices"),
             ("GET", "/v1/voices/aiden"), ("DELETE", "/v1/voices/aiden")]
CREDENTIALS = [None, "Bearer wrong", "bearer wrong", "Bearer", "Bearer  x", f"Basic {base64.b64encode(KEY.encode()).decode()}",
               KEY, f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Token {KEY}", "query"]


@pytest.fixture(scope="module")
def speech_server(custom_voice_tts, tmp_path_factory):
    server = LiveServer(custom_voice_tts, tmp_path_factory.mktemp("voices"), api_key=KEY)
    yield server
    server.close()


def client_of(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=AUTH, timeout=60)


@pytest.fixture(scope="module")
def http(speech_server):
    with client_of(speech_server) as client:
        yield client


def assert_refused(response: httpx.Response, http: httpx.Client, status: int | None = None) -> dict:
    """A 4xx (the given one) with OpenAI's JSON error, and a server that still answers /health."""
    assert 400 <= response.status_code < 500 and response.status_code == (status or response.status_code), response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] in CLIENT_ERRORS, error
    assert http.get("/health").status_code == 200
    return error


@pytest.mark.parametrize("fields", [c[1] for c in _body_cases()], ids=[c[0] for c in _body_cases()])
def test_bad_speech_fields(http, custom_voice_tts, fields):
    body = {"input": "Hi.", "voice": custom_voice_tts.speakers[0], "response_format": "pcm", **FAST, **fields}
    response = http.post("/v1/audio/speech", content=json.dumps(body), headers={"content-type": "application/json"})
    error = assert_refused(response, http)
    named = [name for name in fields if name in error["message"] or name == error["param"]]
    assert named or error["param"] is None, error


@pytest.mark.parametrize("content, content_type", [c[1:] for c in RAW_BODIES], ids=[c[0] for c in RAW_BODIES])
def test_bad_speech_bodies(http, content, content_type):
    headers = {"content-type": content_type} if content_type else {}
    assert_refused(http.post("/v1/audio/speech", content=content, headers=headers), http)


@pytest.mark.parametrize("method, path", PATHS, ids=[f"{m} {p}" for m, p in PATHS])
def test_bad_paths_and_methods(http, method, path):
    assert_refused(http.request(method, path), http)


@pytest.mark.parametrize("credentials", CREDENTIALS, ids=[str(c) for c in CREDENTIALS])
@pytest.mark.parametrize("method, path", ENDPOINTS, ids=[f"{m} {p}" for m, p in ENDPOINTS])
def test_bad_credentials(speech_server, http, method, path, credentials):
    headers = {} if credentials in (None, "query") else {"Authorization": credentials}
    params = {"api_key": KEY} if credentials == "query" else {}  # the query form is for websockets only
    response = httpx.request(method, speech_server.url + path, headers=headers, params=params, timeout=30,
                             json={"input": "Hi.", "voice": "aiden"} if method == "POST" else None)
    assert assert_refused(response, http, 401)["type"] == "authentication_error"


@pytest.mark.parametrize("credentials", CREDENTIALS[:-1], ids=[str(c) for c in CREDENTIALS[:-1]])
def test_bad_websocket_credentials(speech_server, http, credentials):
    headers = {} if credentials is None else {"Authorization": credentials}
    with connect(speech_server.ws_url + "?api_key=wrong", additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 1008 and http.get("/health").status_code == 200


# ----- websocket messages: one session takes them all, answering each with one in-band error ---------------
def _ws_cases() -> list[tuple[str, str]]:
    cases = [("not json", "hello"), ("empty", ""), ("5000 [", "[" * 5000), ("array", "[]"), ("number", "1"),
             ("null", "null"), ("string", '"input.text"'), ("no type", "{}"), ("type number", '{"type": 5}'),
             ("unknown type", '{"type": "dance"}'), ("type null", '{"type": null}'),
             ("over the limit", json.dumps({"type": "input.text", "text": "a" * (MAX_MESSAGE_CHARS + 1)}))]
    cases += [(f"text={value!r}", json.dumps({"type": "input.text", "text": value})) for value in [42, None, [], {"a": 1}]]
    cases += [("text missing", '{"type": "input.text"}')]
    update = [(f"{name}={value!r}", {name: value}) for name in NUMERIC_FIELDS[:-1] for value in BAD_NUMBERS[:6]]
    update += [(f"{name}={value!r}", {name: value}) for name in ("voice", "instructions", "language")
               for value in BAD_STRINGS[:4]]
    update += [("voice nobody", {"voice": "nobody"}), ("format ogg", {"response_format": "ogg"}),
               ("binary maybe", {"binary": "maybe"}), ("unknown field", {"speed": 1.0}),
               ("min above max", {"min_frames": 9, "max_frames": 8})]
    cases += [(f"session.update {name}", json.dumps({"type": "session.update", **fields})) for name, fields in update]
    cases += [(f"spoken text {name}", json.dumps({"type": "input.text", "text": text}))
              for name, text in [("surrogate", "\ud800 lone.\n"), ("reversed pair", "\udc00\ud800 pair.\n")]]
    return cases


@pytest.fixture(scope="module")
def session(speech_server, custom_voice_tts):
    with connect(speech_server.ws_url, additional_headers=AUTH) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(json.dumps({"type": "session.update", "voice": custom_voice_tts.speakers[0], **FAST}))
        assert json.loads(ws.recv(timeout=10))["type"] == "session.updated"
        yield ws
        ws.send(json.dumps({"type": "input.text", "text": "Still talking.\n"}))  # the session survived it all
        events = []
        while not events or events[-1]["type"] != "audio.done":
            message = ws.recv(timeout=30)
            if isinstance(message, str):
                events.append(json.loads(message))
        assert events[-1]["text"] == "Still talking." and [e["type"] for e in events if e["type"] == "error"] == []


@pytest.mark.parametrize("message", [c[1] for c in _ws_cases()], ids=[c[0] for c in _ws_cases()])
def test_bad_websocket_messages(session, http, message):
    session.send(message)
    event = json.loads(session.recv(timeout=30))
    assert event["type"] == "error" and event["error"]["type"] in CLIENT_ERRORS, event
    assert http.get("/health").status_code == 200


def test_binary_websocket_messages(session, http):
    session.send(b"\x00\xff binary")
    assert json.loads(session.recv(timeout=30))["error"]["code"] == "invalid_message"


# ----- voice uploads ------------------------------------------------------------------------------------------
def _audio(seconds=1.5, sample_rate=16000, channels=1, fmt="WAV", subtype="PCM_16", silent=False, value=None):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wav = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * 220 * t)
    if value is not None:
        wav[len(wav) // 2] = value
    buffer = io.BytesIO()
    sf.write(buffer, np.repeat(wav[:, None], channels, axis=1).astype(np.float32), sample_rate, format=fmt,
             subtype=subtype)
    return buffer.getvalue()


UPLOADS = [  # (id, form fields, audio bytes or None for no file, content type, expected status)
    *[(f"name {name!r}", {"name": name}, "ok", "audio/wav", 400)
      for name in ["", " ", "x" * 65, "voice_1", "VOICE_1", "Voice_1", "a/b", "/", "tab\tx", "nul\x00x", "del\x7f"]],
    ("no name", {}, "ok", "audio/wav", 400), ("no file", {"name": "A"}, None, "audio/wav", 400),
    ("empty file", {"name": "A"}, b"", "audio/wav", 422), ("junk", {"name": "A"}, b"not audio", "audio/wav", 422),
    ("text/plain", {"name": "A"}, "ok", "text/plain", 415), ("image", {"name": "A"}, "ok", "image/png", 415),
    ("truncated wav", {"name": "A"}, "truncated", "audio/wav", 422),
    ("silent", {"name": "A"}, _audio(silent=True), "audio/wav", 422),
    ("0.1 s", {"name": "A"}, _audio(0.1), "audio/wav", 422), ("6 s", {"name": "A"}, _audio(6.0), "audio/wav", 413),
    ("NaN sample", {"name": "A"}, _audio(subtype="FLOAT", value=np.nan), "audio/wav", 422),
    ("inf sample", {"name": "A"}, _audio(subtype="FLOAT", value=np.inf), "audio/wav", 422),
    ("384 kHz", {"name": "A"}, _audio(0.6, 384000, fmt="FLAC"), "audio/flac", 422),
    ("20 channels", {"name": "A"}, _audio(0.6, 8000, 20), "audio/wav", 422),
    ("claims 1300 s", {"name": "A"}, silent_flac(0.5, 96000, 8, claimed_seconds=1300), "audio/flac", 413),
    ("claims 3600 s", {"name": "A"}, silent_flac(0.5, 96000, 8, claimed_seconds=3600), "audio/flac", 413),
    ("over the upload limit", {"name": "A"}, b"\0" * 400_000, "audio/wav", 413),
    ("two transcripts", {"name": "A", "transcript": ["a", "b"]}, "ok", "audio/wav", 201),
]


@pytest.fixture(scope="module")
def voice_server(tiny_base, tmp_path_factory):
    server = LiveServer(TTS.from_pretrained(tiny_base, device="cpu"), tmp_path_factory.mktemp("voices"),
                        api_key=KEY, max_upload_bytes=300_000, max_upload_seconds=5)
    yield server
    server.close()


@pytest.fixture(scope="module")
def voice_http(voice_server):
    with client_of(voice_server) as client:
        yield client


@pytest.mark.parametrize("fields, audio, content_type, status", [c[1:] for c in UPLOADS], ids=[c[0] for c in UPLOADS])
def test_bad_voice_uploads(voice_http, fields, audio, content_type, status):
    if isinstance(audio, str):
        audio = _audio() if audio == "ok" else _audio()[:100]
    files = {} if audio is None else {"audio": ("reference", audio, content_type)}
    response = voice_http.post("/v1/voices", data=fields, files=files or {"unused": ("x", b"", "audio/wav")}
                               if audio is None else files)
    if status == 201:  # the last of a repeated field wins, as in any form
        assert response.status_code == 201 and response.json()["transcript"] == "b"
        assert voice_http.delete(f"/v1/voices/{response.json()['id']}").status_code == 200
        return
    assert_refused(response, voice_http, status)
    assert [v for v in voice_http.get("/v1/voices").json()["data"]] == []


FORMS = [  # (id, body, content type, expected status)
    ("json", b'{"name": "A"}', "application/json", 415), ("urlencoded", b"name=A", "application/x-www-form-urlencoded", 415),
    ("no boundary", b"--x--", "multipart/form-data", 400),
    ("garbage multipart", b"garbage", "multipart/form-data; boundary=x", 400),
    ("not UTF-8 name", b'--x\r\nContent-Disposition: form-data; name="name"\r\n\r\nCaf\xe9\r\n--x--\r\n',
     "multipart/form-data; boundary=x", 400),
    ("no part name", b"--x\r\nContent-Disposition: form-data\r\n\r\nA\r\n--x--\r\n", "multipart/form-data; boundary=x", 400),
    ("nine fields", b"".join(b'--x\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % n for n in range(9))
     + b"--x--\r\n", "multipart/form-data; boundary=x", 400),
    ("two files", b"".join(b'--x\r\nContent-Disposition: form-data; name="audio"; filename="a"\r\n\r\nv\r\n' for _ in "ab")
     + b"--x--\r\n", "multipart/form-data; boundary=x", 400),
]


@pytest.mark.parametrize("body, content_type, status", [c[1:] for c in FORMS], ids=[c[0] for c in FORMS])
def test_bad_voice_forms(voice_http, body, content_type, status):
    assert_refused(voice_http.post("/v1/voices", content=body, headers={"content-type": content_type}), voice_http,
                   status)
