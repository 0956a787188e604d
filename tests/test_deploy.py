"""Ray Serve replicas on a local Ray cluster (CPU, tiny Base checkpoint): streaming through Ray's proxy with
the openai client, one voice store for every replica, /metrics for every replica, a replica killed mid-stream,
drain on scale-down and on SIGTERM to `qtts serve --replicas`."""
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from websockets.sync.client import connect

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ray.serve.context import _get_global_client  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from qtts.api import TTS  # noqa: E402
from qtts.deploy import APP_NAME  # noqa: E402
from qtts.deploy.replica import SpeechReplica  # noqa: E402
from qtts.server.app import create_app  # noqa: E402
from qtts.server.state import ServerSettings  # noqa: E402
from qtts.testing.ports import free_port  # noqa: E402
from tests.server.conftest import assert_same_audio  # noqa: E402
from tests.server.test_voices_api import reference_wav  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_PER_FRAME = 1920
SHORT = {"max_frames": 8, "min_frames": 8, "greedy": True}
LONG_FRAMES = 150  # seconds on CPU: long enough to act on a stream in flight
LONG = {"max_frames": LONG_FRAMES, "min_frames": LONG_FRAMES, "greedy": True}


def replica_states() -> dict:
    return dict(serve.status().applications[APP_NAME].deployments["SpeechReplica"].replica_states)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def url():
    """A local Ray cluster with Serve's proxy on a free port."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # replicas import this checkout's qtts
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def deploy(url, tiny_base, tmp_path_factory):
    """Two replicas of the tiny Base model sharing one voices folder, deployed as a Serve config file would
    (import path and args); call it with deployment options (num_replicas=...) to apply them. Each replica
    takes two streams at a time, so four concurrent streams land two on each."""
    application = {"name": APP_NAME, "route_prefix": "/", "import_path": "qtts.deploy:build_app",
                   "args": {"model": str(tiny_base), "replicas": 2, "gpus_per_replica": 0, "cpus_per_replica": 0.5,
                            "max_ongoing_requests": 2, "drain_timeout_s": 60,
                            "server": {"voices_dir": str(tmp_path_factory.mktemp("voices")), "max_batch": 4,
                                       "model_name": "tiny-base"}}}

    def apply(**options):
        deployments = [{"name": "SpeechReplica", **options}] if options else []
        # what `serve run config.yaml` and `serve deploy` do
        _get_global_client().deploy_apps(ServeDeploySchema(applications=[{**application, "deployments": deployments}]))

    apply()
    status = wait_for(lambda: _app_status() in ("RUNNING", "DEPLOY_FAILED") and serve.status().applications[APP_NAME],
                      120, "the application deployed")
    assert status.status == "RUNNING", status.message
    return apply


@pytest.fixture(scope="module")
def voice(url, deploy) -> str:
    created = httpx.post(url + "/v1/voices", data={"name": "shared"}, timeout=60,
                         files={"audio": ("reference.wav", reference_wav(), "audio/wav")})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_serve_health_check_fails_until_health_answers_200(tiny_base, tmp_path):
    """Serve replaces a replica after three failed checks; a replica fails them while /health says no."""
    app = create_app(TTS.from_pretrained(tiny_base, device="cpu"), ServerSettings(voices_dir=tmp_path))
    replica = SimpleNamespace(http_app=app)  # the check reads nothing else before /health answers 200
    with pytest.raises(RuntimeError, match="503"):  # engine not started: {"status": "starting"}
        asyncio.run(SpeechReplica.check_health(replica))


def test_sigterm_drains_qtts_serve_replicas(tiny_base, tmp_path):
    """`qtts serve --replicas 1` on a Ray cluster of its own: SIGTERM lets the stream in flight finish."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "qtts.cli", "serve", "--model", str(tiny_base), "--device",
                                   "cpu", "--replicas", "1", "--port", str(port), "--max-batch", "4",
                                   "--voices-dir", str(tmp_path / "voices"), "--log-level", "warning"],
                                  env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
    own = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(own + "/health") or server.poll() is not None, 120, "qtts serve --replicas up")
        assert server.poll() is None, log.read_text()[-3000:]
        voice = httpx.post(own + "/v1/voices", data={"name": "v"}, timeout=60,
                           files={"audio": ("reference.wav", reference_wav(), "audio/wav")}).json()["id"]
        with httpx.stream("POST", own + "/v1/audio/speech", timeout=120,
                          json={"input": "Hello there.", "voice": voice, "response_format": "pcm", **LONG}) as response:
            chunks = response.iter_bytes()
            received = len(next(chunks))
            server.send_signal(signal.SIGTERM)
            received += sum(len(chunk) for chunk in chunks)
        assert received == 2 * LONG_FRAMES * SAMPLES_PER_FRAME
        assert server.wait(timeout=90) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def speech(url, voice, **fields) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", timeout=60,
                      json={"input": "Hello there.", "voice": voice, "response_format": "pcm", **SHORT, **fields})


def test_the_whole_surface_streams_through_the_proxy(url, voice):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with client.audio.speech.with_streaming_response.create(model="m", voice=voice, input="Hello there.",
                                                            response_format="pcm", extra_body=SHORT) as response:
        assert response.headers["content-type"] == "audio/pcm"
        audio = b"".join(response.iter_bytes())
    assert len(audio) == 2 * 8 * SAMPLES_PER_FRAME

    sse = httpx.post(url + "/v1/audio/speech", timeout=60, json={"input": "Hello there.", "voice": voice,
                                                                 "response_format": "pcm", "stream_format": "sse",
                                                                 **SHORT})
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    assert_same_audio(audio, b"".join(base64.b64decode(e["audio"]) for e in events[:-1]))

    with connect(url.replace("http", "ws") + "/v1/audio/speech/stream") as ws:
        ws.send(json.dumps({"type": "session.update", "voice": voice, "response_format": "pcm", **SHORT}))
        ws.send(json.dumps({"type": "input.text", "text": "Hello there."}))
        ws.send(json.dumps({"type": "input.done"}))
        messages = list(ws)
    assert json.loads(messages[-1])["type"] == "session.done"
    assert_same_audio(audio, b"".join(m for m in messages if isinstance(m, bytes)))

    assert [m.id for m in client.models.list().data] == ["tiny-base"]
    assert httpx.get(url + "/health").status_code == 200
    assert "qtts_first_audio_seconds" in httpx.get(url + "/metrics").text


def test_a_voice_made_through_one_replica_is_usable_through_every_other(url, voice):
    created = httpx.post(url + "/v1/voices", data={"name": "fresh"}, timeout=60,
                         files={"audio": ("reference.wav", reference_wav(seed=1), "audio/wav")})
    maker = created.headers["x-qtts-replica"]
    served_by = set()
    for _ in range(40):  # the proxy picks replicas at random: ask until both have answered
        response = speech(url, created.json()["id"])
        assert response.status_code == 200, response.text
        served_by.add(response.headers["x-qtts-replica"])
        if len(served_by) == 2:
            break
    assert len(served_by) == 2 and served_by - {maker}
    deleted = httpx.delete(url + f"/v1/voices/{created.json()['id']}")
    assert deleted.status_code == 200
    for _ in range(6):
        assert speech(url, "fresh").status_code == 404  # gone on every replica at once


def test_metrics_cover_every_replica(url, voice):
    replicas = set()
    wait_for(lambda: replicas.add(speech(url, voice).headers["x-qtts-replica"]) or len(replicas) == 2, 30,
             "both replicas answering")

    def labelled() -> set:
        text = httpx.get(url + "/metrics").text
        return {line.split('replica="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("qtts_requests_total{") and 'endpoint="/v1/audio/speech"' in line}

    # each replica posts its metrics at every health check (5 s); whichever answers the scrape shows all
    wait_for(lambda: labelled() == replicas, 20, "both replicas in /metrics")


def test_a_replica_killed_mid_stream_fails_that_stream_and_is_replaced(url, voice):
    received, killed = 0, None
    with pytest.raises(httpx.RemoteProtocolError):  # a broken body, not a hang or a short "complete" file
        with httpx.stream("POST", url + "/v1/audio/speech", timeout=60,
                          json={"input": "Hello there.", "voice": voice, "response_format": "pcm", **LONG}) as response:
            for chunk in response.iter_bytes():
                received += len(chunk)
                if killed is None:
                    killed = response.headers["x-qtts-replica"]
                    ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#SpeechReplica#{killed}", namespace="serve"))
    assert received < 2 * LONG_FRAMES * SAMPLES_PER_FRAME
    for _ in range(4):  # the other replica goes on serving
        response = speech(url, voice)
        assert response.status_code == 200 and response.headers["x-qtts-replica"] != killed
    replacements = set()  # Serve starts a new replica in place of the killed one

    def both_serve() -> bool:
        replacements.add(speech(url, voice).headers["x-qtts-replica"])
        return len(replacements - {killed}) == 2

    wait_for(both_serve, 90, "a replacement replica serving")


def test_scale_down_lets_the_stopping_replica_finish_its_streams(url, voice, deploy):
    results, replicas, finished_at = {}, {}, {}

    def stream(key):
        with httpx.stream("POST", url + "/v1/audio/speech", timeout=120,
                          json={"input": "Hello there.", "voice": voice, "response_format": "pcm", **LONG}) as response:
            replicas[key] = response.headers["x-qtts-replica"]
            results[key] = sum(len(chunk) for chunk in response.iter_bytes())
        finished_at[key] = time.monotonic()

    threads = [threading.Thread(target=stream, args=(key,)) for key in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(replicas) == 4, 60, "four streams started")
    assert len(set(replicas.values())) == 2  # two on each replica: one of them is about to stop
    deploy(num_replicas=1)  # a config change, not a new version: one of the two replicas stops
    scaled_at = time.monotonic()
    wait_for(lambda: replica_states().get("RUNNING") == 1, 30, "one replica stopping")
    after = speech(url, voice)
    assert after.status_code == 200  # new requests go to the replica that stays
    for thread in threads:
        thread.join(timeout=120)
    assert results == {key: 2 * LONG_FRAMES * SAMPLES_PER_FRAME for key in range(4)}
    stopped = [key for key in range(4) if replicas[key] != after.headers["x-qtts-replica"]]
    assert len(stopped) == 2 and all(finished_at[key] > scaled_at for key in stopped)  # they were draining
    wait_for(lambda: replica_states() == {"RUNNING": 1}, 60, "the drained replica gone")


def _app_status() -> str | None:
    application = serve.status().applications.get(APP_NAME)
    return application and application.status


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
