"""`qtts serve` options: where the API key comes from, the engine switches."""
import argparse

import pytest

from qtts.server.cli import API_KEY_ENV, add_serve_parser, api_key_from, server_settings


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    return parser.parse_args(["serve", "--model", "m", *argv])


def test_the_api_key_can_stay_out_of_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert api_key_from(serve_args()) is None
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    assert api_key_from(serve_args("--api-key-file", str(key_file))) == "from-a-file"
    monkeypatch.setenv(API_KEY_ENV, "from-the-environment")
    assert api_key_from(serve_args()) == "from-the-environment"
    assert api_key_from(serve_args("--api-key-file", str(key_file))) == "from-a-file"
    assert api_key_from(serve_args("--api-key", "on-the-command-line")) == "on-the-command-line"


def test_an_unusable_key_file_stops_the_server(tmp_path):
    with pytest.raises(SystemExit, match="cannot read"):
        api_key_from(serve_args("--api-key-file", str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        api_key_from(serve_args("--api-key-file", str(tmp_path / "empty")))


def test_text_speculation_can_be_turned_off(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert server_settings(serve_args(), engine_process=False).speculate_text
    assert not server_settings(serve_args("--speculate-text", "off"), engine_process=False).speculate_text
