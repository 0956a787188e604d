"""The container's recipe without a Docker engine: the package built from only what the Dockerfile copies,
installed into a fresh environment, started by the image's entry point with its environment, and probed by its
health check, with a `docker run` argument appended."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qtts.testing.ports import free_port
from tests.server.test_voices_api import reference_wav

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_PER_FRAME = 1920
pytestmark = pytest.mark.slow


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def image_env(steps) -> dict[str, str]:
    env = {}
    for name, args in steps:
        if name == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The Dockerfile's COPY set, built and installed into a virtual environment of its own (this machine's
    packages stand in for the image's `pip install` of the dependencies)."""
    steps = instructions(ROOT / "Dockerfile")
    root = tmp_path_factory.mktemp("image")
    source = root / "src"
    source.mkdir()
    for name, args in steps:
        if name == "COPY":
            *sources, destination = args.split()
            for item in sources:
                target = source / destination / item if destination.endswith("/") else source / destination
                copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy
                copy(ROOT / item, target)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    # this machine's pip installs into the environment it runs in; the build runs isolated, as in the image
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(source)],
                   check=True, cwd=root)
    return steps, root, venv


def test_the_image_serves_from_its_entry_point_once_its_health_check_passes(image, tiny_base):
    steps, root, venv = image
    declared = image_env(steps)
    assert {"QTTS_MODEL", "QTTS_PORT", "HF_HOME", "XDG_DATA_HOME"} <= declared.keys()
    port = free_port()
    home, data = root / "home", root / "data"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", HOME=str(home), QTTS_MODEL=str(tiny_base),
               QTTS_PORT=str(port), HF_HOME=str(data / "hf"), XDG_DATA_HOME=str(data), PYTHONUNBUFFERED="1")
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    health = json.loads(dict(steps)["HEALTHCHECK"].split("CMD", 1)[1])
    installed = subprocess.run(["python3", "-c", "import qtts; print(qtts.__file__)"], env=env, cwd=home,
                               capture_output=True, text=True, check=True).stdout
    assert installed.startswith(str(venv)), installed  # the image's install runs, not this checkout

    def healthy() -> bool:
        return subprocess.run(health, env=env, cwd=home, capture_output=True).returncode == 0

    log = root / "serve.log"
    with log.open("wb") as output:  # `docker run qtts --device cpu ...`: arguments after the image name
        server = subprocess.Popen(entry + ["--device", "cpu", "--max-batch", "2", "--log-level", "warning"],
                                  env=env, cwd=home, stdout=output, stderr=subprocess.STDOUT)
    try:
        assert not healthy()
        deadline = time.monotonic() + 180
        while not healthy():
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the health check never passed: " + log.read_text()[-3000:]
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        page = httpx.get(url + "/", timeout=30)  # the web demo: package data made it into the install
        assert page.status_code == 200 and "<html" in page.text.lower()
        created = httpx.post(url + "/v1/voices", data={"name": "v"}, timeout=60,
                             files={"audio": ("reference.wav", reference_wav(), "audio/wav")})
        assert created.status_code == 201, created.text
        assert any((data / "qtts" / "voices").iterdir())  # under the image's data volume
        frames = 150  # long enough to be in flight when the container is stopped
        with httpx.stream("POST", url + "/v1/audio/speech", timeout=120,
                          json={"input": "Hello there.", "voice": created.json()["id"], "response_format": "pcm",
                                "max_frames": frames, "min_frames": frames, "greedy": True}) as spoken:
            assert spoken.status_code == 200
            chunks = spoken.iter_bytes()
            received = len(next(chunks))
            server.send_signal(signal.SIGTERM)  # `docker stop`: the stream in flight finishes
            received += sum(len(chunk) for chunk in chunks)
        assert received == 2 * frames * SAMPLES_PER_FRAME
        # uvicorn raises the signal again once it has shut down, so the exit reads as SIGTERM's (143 in Docker)
        assert server.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
