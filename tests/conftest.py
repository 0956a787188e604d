"""Fixtures shared by the whole suite.

Tiny random-weight checkpoints in the official hub layout (qtts/testing/fixtures.py), written
once into $QTTS_FIXTURE_CACHE (default ~/.cache/qtts/fixtures) and reused across sessions.
"tiny" is shaped like the 1.7B models (code predictor narrower than the talker, with a
projection; instructions allowed); fixture_dir(model_type, "tiny-0.6b") gives the 0.6B shape.
"""
import pytest

from qtts.testing.fixtures import fixture_dir


@pytest.fixture(scope="session")
def tiny_custom_voice():
    return fixture_dir("custom_voice", "tiny")


@pytest.fixture(scope="session")
def tiny_voice_design():
    return fixture_dir("voice_design", "tiny")


@pytest.fixture(scope="session")
def tiny_base():
    return fixture_dir("base", "tiny")
