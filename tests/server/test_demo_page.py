"""The demo page at `/` (qtts/server/static/index.html) in headless Chromium, against real servers.

Skipped without Chromium and its driver (Debian: apt-get install chromium chromium-driver) or selenium.
"""
import base64
import json
import shutil

import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from qtts.api import TTS
from tests.server.conftest import FAST, LiveServer, assert_same_audio

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER and webdriver), reason="needs chromium, "
                                   "chromedriver (apt-get install chromium chromium-driver) and selenium")
LONG = {"min_frames": 1500, "max_frames": 1500}  # a minute of CPU time for the tiny model: only Stop ends it early


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,1400",
                     "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


class DemoPage:
    """The page in the browser, driven as a user would, with what it shows read back."""

    def __init__(self, driver, server: LiveServer):
        self.driver, self.server = driver, server
        driver.get(server.url + "/")
        driver.get_log("browser")  # from here on, only this page's messages
        self.wait_for(lambda: " · " in self.element("model").text)

    def element(self, element_id: str):
        return self.driver.find_element(By.ID, element_id)

    def wait_for(self, condition, timeout_s: float = 60):
        return WebDriverWait(self.driver, timeout_s, poll_frequency=0.05).until(lambda _: condition())

    def type(self, element_id: str, text: str) -> None:
        field = self.element(element_id)
        field.clear()
        field.send_keys(text)

    def request_fields(self, fields: dict) -> None:
        """Opens Options and enters `fields` as the request's extra JSON fields."""
        if self.element("options").get_attribute("open") is None:
            self.driver.find_element(By.CSS_SELECTOR, "#options > summary").click()
        self.type("extra", json.dumps(fields))

    def options(self, element_id: str) -> list[tuple[str, str]]:
        return [(o.get_attribute("value"), o.text) for o in Select(self.element(element_id)).options]

    def stats(self) -> dict:
        return {key: self.element("stats").get_attribute(f"data-{key}")
                for key in ("state", "first-audio-ms", "audio-seconds", "real-time-factor")}

    def speak(self, path: str, expect: str = "done") -> dict:
        self.element(path).click()
        self.wait_for(lambda: self.stats()["state"] not in ("idle", "speaking"))
        stats = self.stats()
        assert stats["state"] == expect, self.element("state").text
        return stats

    def downloaded_pcm(self) -> bytes:
        """The samples of the WAV file behind the Download link."""
        assert self.element("download").get_attribute("aria-disabled") == "false"
        data_url = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(document.getElementById('download').href).then((r) => r.blob()).then((blob) => {"
            "  const reader = new FileReader(); reader.onload = () => done(reader.result); reader.readAsDataURL(blob); });")
        wav = base64.b64decode(data_url.split(",", 1)[1])
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and int.from_bytes(wav[40:44], "little") == len(wav) - 44
        return wav[44:]

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]


def http_pcm(server: LiveServer, text: str, **fields) -> bytes:
    response = httpx.post(server.url + "/v1/audio/speech", timeout=60,
                          json={"input": text, "response_format": "pcm", **fields, **FAST})
    assert response.status_code == 200
    return response.content


def requests_counted(server: LiveServer, endpoint: str, status: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "qtts_requests_total" and sample.labels == {"endpoint": endpoint, "status": status})


def assert_played(page: DemoPage, stats: dict, expected_pcm: bytes) -> None:
    """The page timed the audio, counted all of it, and offers exactly what the server spoke."""
    assert float(stats["first-audio-ms"]) > 0 and float(stats["real-time-factor"]) > 0
    assert float(stats["audio-seconds"]) == pytest.approx(len(expected_pcm) / 2 / 24000, abs=1e-3)
    assert_same_audio(expected_pcm, page.downloaded_pcm())


@needs_browser
def test_custom_voice_page_speaks_both_ways(custom_voice_server, custom_voice_tts, browser):
    page = DemoPage(browser, custom_voice_server)
    assert "tiny-custom-voice · custom_voice" in page.element("model").text
    assert page.options("voice") == [(s, s) for s in custom_voice_tts.speakers]
    assert [value for value, _ in page.options("language")] == custom_voice_tts.languages
    assert page.element("instructions").is_displayed() and not page.element("clone-panel").is_displayed()
    assert page.element("download").get_attribute("aria-disabled") == "true"

    speaker = custom_voice_tts.speakers[1]
    Select(page.element("voice")).select_by_value(speaker)
    page.type("text", "Hello there.")
    page.request_fields(FAST)
    expected = http_pcm(custom_voice_server, "Hello there.", voice=speaker)

    assert_played(page, page.speak("http"), expected)
    assert_played(page, page.speak("ws"), expected)
    assert "Hello there." in page.element("log").text
    page.element("stop").click()  # after the session closed: nothing to cancel, and no error
    assert page.stats()["state"] == "done"
    assert page.console_errors() == []


@needs_browser
@pytest.mark.parametrize("path, endpoint", [("ws", "/v1/audio/speech/stream"), ("http", "/v1/audio/speech")])
def test_stop_cancels_generation_on_the_server(custom_voice_server, browser, path, endpoint):
    page = DemoPage(browser, custom_voice_server)
    page.type("text", "One long sentence.")
    page.request_fields(LONG)
    cancelled_before = requests_counted(custom_voice_server, endpoint, "499")
    page.element(path).click()
    page.wait_for(lambda: page.stats()["first-audio-ms"])
    page.element("stop").click()
    assert page.stats()["state"] == "stopped"
    custom_voice_server.wait_idle(timeout_s=5)
    page.wait_for(lambda: requests_counted(custom_voice_server, endpoint, "499") == cancelled_before + 1, 5)
    assert page.element("download").get_attribute("aria-disabled") == "false"  # what came before Stop
    assert page.console_errors() == []


@needs_browser
def test_voice_design_page_speaks_from_a_description(tiny_voice_design, browser, tmp_path):
    server = LiveServer(TTS.from_pretrained(tiny_voice_design, device="cpu"), tmp_path, model_name="tiny-design")
    try:
        page = DemoPage(browser, server)
        assert not page.element("voice-field").is_displayed()
        assert page.element("instructions-label").text == "Voice description"
        page.type("text", "Hello there.")
        page.request_fields(FAST)
        page.element("http").click()
        assert page.stats()["state"] == "error" and "describe the voice" in page.element("state").text
        example = page.driver.find_elements(By.CSS_SELECTOR, "#examples button")[1]
        example.click()
        description = page.element("instructions").get_attribute("value")
        assert description == example.text
        assert_played(page, page.speak("http"), http_pcm(server, "Hello there.", instructions=description))
        assert page.console_errors() == []
    finally:
        server.close()


@needs_browser
def test_base_page_creates_speaks_and_deletes_a_clone_voice(tiny_base, browser, tmp_path):
    server = LiveServer(TTS.from_pretrained(tiny_base, device="cpu"), tmp_path / "voices", model_name="tiny-base")
    reference = tmp_path / "reference.wav"
    t = np.arange(24000) / 16000
    sf.write(reference, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32), 16000)
    name = "<b>Ann</b> & co"
    try:
        page = DemoPage(browser, server)
        assert page.options("voice") == [("", "(no voices yet: create one below)")]
        assert page.element("clone-panel").get_attribute("open") is not None
        assert not page.element("instructions-field").is_displayed()
        page.type("voice-name", name)
        page.element("reference").send_keys(str(reference))
        page.type("transcript", "Hello there.")
        page.element("create-voice").click()
        page.wait_for(lambda: page.element("clone-note").text.startswith("created"))
        [(voice_id, label)] = page.options("voice")
        assert label == name and not page.driver.find_elements(By.CSS_SELECTOR, "#voice b")
        assert Select(page.element("voice")).first_selected_option.get_attribute("value") == voice_id
        assert "with transcript" in page.element("voice-info").text

        page.type("text", "Hello there.")
        page.request_fields(FAST)
        assert_played(page, page.speak("ws"), http_pcm(server, "Hello there.", voice=voice_id))

        page.element("delete-voice").click()
        page.driver.switch_to.alert.accept()
        page.wait_for(lambda: page.options("voice") == [("", "(no voices yet: create one below)")])
        assert httpx.get(server.url + "/v1/voices").json()["data"] == []
        assert page.console_errors() == []
    finally:
        server.close()


def test_the_favicon_is_served(custom_voice_server):
    response = httpx.get(custom_voice_server.url + "/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
