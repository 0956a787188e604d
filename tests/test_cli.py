"""The `qtts` command, run in-process on tiny fixtures: outputs, progress, and one-line errors."""
import json
import struct
import tempfile

import numpy as np
import pytest
import soundfile as sf
import torch

from qtts.api import TTS
from qtts.cli import main
from qtts.cli.parser import build_parser
from qtts.cli.output import GrowingAudioFile


def run(capsys, *argv):
    """(exit code, stderr) of `qtts ARGV`."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the talker and codec decoder get loaded (a check came too late)."""
    def refuse(*_):
        raise AssertionError("the model was loaded before the error was found")

    for module in ("batch", "speak"):  # batch first: importing it binds speak's load_generator
        monkeypatch.setattr(f"qtts.cli.{module}.load_generator", refuse)


def speak(folder, out, *extra):
    return ["speak", "Hello there.", "--model", folder, "--speaker", "aiden", "--out", out, "--device", "cpu",
            "--max-frames", 4, *extra]


def test_speak_writes_the_file_with_a_bar_that_has_a_total_and_warns_at_the_cap(tiny_custom_voice, tmp_path,
                                                                              capsys):
    code, err = run(capsys, *speak(tiny_custom_voice, tmp_path / "a.wav", "--greedy"))
    assert code == 0, err
    samples, rate = sf.read(tmp_path / "a.wav")
    assert rate == 24000 and samples.shape == (4 * 1920,)
    assert "4/4" in err  # frames out of the cap
    assert "warning: stopped at the frame cap (4 frames" in err  # random weights never say stop


def test_stream_grows_a_playable_file_that_ends_as_the_whole_clip(tiny_custom_voice, tmp_path, capsys):
    assert run(capsys, *speak(tiny_custom_voice, tmp_path / "whole.wav", "--greedy"))[0] == 0
    code, err = run(capsys, *speak(tiny_custom_voice, tmp_path / "streamed.wav", "--greedy", "--stream"))
    assert code == 0, err
    whole, _ = sf.read(tmp_path / "whole.wav", dtype="int16")
    streamed, _ = sf.read(tmp_path / "streamed.wav", dtype="int16")
    assert streamed.shape == whole.shape and np.abs(streamed.astype(int) - whole).max() <= 1
    header = (tmp_path / "streamed.wav").read_bytes()[:44]
    assert struct.unpack("<I", header[40:44])[0] == 2 * len(whole)  # the header was fixed up at the end


def test_a_growing_wav_can_be_read_before_it_is_finished(tmp_path):
    path = tmp_path / "growing.wav"
    with GrowingAudioFile(path, 24000) as sink:
        sink.write(np.full(1920, 0.5, dtype=np.float32))
        partial, rate = sf.read(path, dtype="float32")
        assert rate == 24000 and partial.shape == (1920,)
        sink.write(np.zeros(960, dtype=np.float32))
    assert sf.read(path)[0].shape == (2880,)


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tiny_custom_voice, tmp_path, capsys, monkeypatch):
    class InterruptedStream:
        frames = 1

        def __iter__(self):
            yield np.zeros(1920, dtype=np.float32)
            raise KeyboardInterrupt

    monkeypatch.setattr(TTS, "stream", lambda self, request, chunk_frames=None: InterruptedStream())
    code, err = run(capsys, *speak(tiny_custom_voice, tmp_path / "a.wav", "--stream"))
    assert code == 130 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out,message", [
    ("out.xyz", "cannot tell the audio format"),
    ("missing-folder/out.wav", "does not exist"),
    ("a-folder.wav", "is a folder"),
])
def test_a_bad_output_fails_before_the_model_loads(out, message, tiny_custom_voice, tmp_path, capsys,
                                                    no_model_load):
    (tmp_path / "a-folder.wav").mkdir()
    code, err = run(capsys, *speak(tiny_custom_voice, tmp_path / out))
    assert code == 2 and message in err and err.count("\n") == 1


def test_an_unwritable_folder_is_one_line(tiny_custom_voice, capsys, no_model_load):
    try:
        tempfile.TemporaryFile(dir="/sys").close()
        pytest.skip("/sys takes new files here")
    except OSError:
        pass
    code, err = run(capsys, *speak(tiny_custom_voice, "/sys/out.wav"))
    assert code == 2 and "cannot write into /sys" in err


@pytest.mark.parametrize("argv,message", [
    (["speak", "   ", "--speaker", "aiden"], "text is empty"),
    (["speak", "Hi.", "--speaker", "nobody"], "unknown speaker"),
    (["speak", "Hi."], "choose a speaker"),
    (["design", "Hi.", "--instruct", "calm"], "`qtts design` needs a VoiceDesign model"),
    (["clone", "Hi.", "--ref", "."], "is a folder"),
    (["speak", "Hi.", "--speaker", "aiden", "--device", "gpu"], "is not a device"),
])
def test_bad_input_is_one_line_and_exit_2_before_the_model_loads(argv, message, tiny_custom_voice, tmp_path,
                                                                 capsys, no_model_load):
    code, err = run(capsys, *argv, "--model", tiny_custom_voice, "--out", tmp_path / "a.wav")
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tiny_custom_voice, tmp_path, capsys):
    code, err = run(capsys, "speak", "Hi.", "--speaker", "aiden", "--model", tiny_custom_voice,
                    "--out", tmp_path / "a.wav", "--device", "cuda")
    assert code == 2 and "--device cpu" in err and err.count("\n") == 1


def test_a_huge_seed_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["speak", "Hi.", "--seed", "99999999999999999999999"])
    assert exit_.value.code == 2 and "out of range" in capsys.readouterr().err


def test_a_cut_short_weights_file_is_named(tiny_custom_voice, tmp_path, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_custom_voice, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, err = run(capsys, *speak(folder, tmp_path / "a.wav"))
    assert code == 2 and str(weights) in err and err.count("\n") == 1


def test_max_len_reaches_the_model(tiny_custom_voice, tmp_path, capsys):
    code, err = run(capsys, *speak(tiny_custom_voice, tmp_path / "a.wav", "--max-len", 8))
    assert code == 2 and "max_len=8" in err


def test_version_and_fixture_help(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("qtts ")
    with pytest.raises(SystemExit):
        main(["fixture", "-h"])
    assert "`qtts design` --type voice_design, `qtts clone` --type base" in " ".join(capsys.readouterr().out.split())
    fixture = next(action for action in build_parser()._subparsers._group_actions[0].choices.items()
                   if action[0] == "fixture")[1]
    assert all(action.help for action in fixture._actions)


def test_fixture_shows_progress_with_a_total(tmp_path, capsys):
    code, err = run(capsys, "fixture", "--size", "tiny", "--out", tmp_path / "model")
    assert code == 0 and "writing weights: 100%" in err
    assert json.loads((tmp_path / "model" / "config.json").read_text())["tts_model_type"] == "custom_voice"


# --- batch: --input-file / --out-dir --------------------------------------------------------------

LONG_TEXT = " ".join(["word"] * 300)
BATCH_INPUT = f"""Hello there.
{{"text": "Second line.", "speaker": "ryan", "out": "second.flac", "seed": 5}}
{{"text": "A bad speaker.", "speaker": "nobody"}}
not JSON {{, a plain text
{{"text": oops}}
{{"text": "{LONG_TEXT}"}}

{{"text": "Written before.", "out": "exists.wav"}}
{{"text": "Hi.", "instruct": "{LONG_TEXT}"}}
"""


def test_batch_writes_every_good_line_reports_bad_ones_by_number_and_resumes(tiny_custom_voice, tmp_path, capsys,
                                                                             monkeypatch):
    submitted = []
    generate_many = TTS.generate_many

    def recording(self, requests, **options):
        submitted[:] = list(requests)
        return generate_many(self, submitted, **options)

    monkeypatch.setattr(TTS, "generate_many", recording)
    (tmp_path / "lines.txt").write_text(BATCH_INPUT)
    out = tmp_path / "out"
    out.mkdir()
    (out / "exists.wav").write_bytes(b"kept")
    argv = ["speak", "--input-file", tmp_path / "lines.txt", "--out-dir", out, "--model", tiny_custom_voice,
            "--speaker", "aiden", "--device", "cpu", "--max-frames", 3, "--max-len", 200]
    code, err = run(capsys, *argv)
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["00001.wav", "00004.wav", "00006.wav", "exists.wav",
                                                     "second.flac"]
    assert sf.read(out / "second.flac")[0].shape == (3 * 1920,) and (out / "exists.wav").read_bytes() == b"kept"
    # the long line does not fit max_len=200: it is spoken in parts of 3 frames each, 0.25 s apart
    parts, rest = divmod(len(sf.read(out / "00006.wav")[0]) + 6000, 3 * 1920 + 6000)
    assert parts > 1 and rest == 0
    assert f"line 6: parts {', '.join(str(n) for n in range(1, parts + 1))} of {parts} stopped" in err
    for line, message in ((3, "unknown speaker"), (5, "not valid JSON"), (9, "the text does not fit max_len=200")):
        assert f"error: line {line}: {message}" in err  # each found before the model loads
    assert "4/4" in err and "audio-s/s" in err
    assert "4 written, 1 already there, 3 failed (of 8 lines)" in err
    assert (submitted[1].speaker, submitted[1].sampling.seed, submitted[0].speaker) == ("ryan", 5, "aiden")

    submitted.clear()
    code, err = run(capsys, *argv)  # again: what was written is skipped, the bad lines fail again
    assert code == 2 and submitted == []
    assert "0 written, 5 already there, 3 failed" in err


def test_batch_options_are_checked_before_anything_loads(tiny_custom_voice, tmp_path, capsys, no_model_load):
    (tmp_path / "lines.txt").write_text("Hello.\n")
    code, err = run(capsys, "speak", "--input-file", tmp_path / "lines.txt", "--model", tiny_custom_voice)
    assert code == 2 and "--out-dir" in err
    code, err = run(capsys, "speak", "Hello.", "--input-file", tmp_path / "lines.txt", "--out-dir", tmp_path)
    assert code == 2 and "either a text or --input-file" in err


def test_text_from_stdin_is_spoken_as_it_arrives(tiny_custom_voice, tmp_path, monkeypatch):
    """--text-stdin --stream: the text piped in, in pieces as a pipe delivers them, speaks as the whole text does
    in streaming text mode."""
    import io

    import numpy as np
    import soundfile

    from qtts.api import TTS
    from qtts.cli import main

    text = "Hello there, how are you today? Fine, thanks."

    class Pipe(io.BytesIO):
        def read1(self, size=-1):  # a pipe hands over what has arrived: a few bytes at a time here
            return super().read1(min(size, 7))

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(Pipe(text.encode())))
    out = tmp_path / "stdin.wav"
    assert main(["speak", "--text-stdin", "--stream", "--model", str(tiny_custom_voice), "--speaker", "aiden",
                 "--seed", "3", "--max-frames", "12", "--dtype", "fp32", "--device", "cpu", "--out", str(out)]) == 0
    tts = TTS.from_pretrained(tiny_custom_voice, device="cpu", dtype="fp32")
    expected = tts.generate(tts.request(text, speaker="aiden", seed=3, max_frames=12, non_streaming_mode=False))
    written, _ = soundfile.read(out, dtype="float32")
    assert written.shape == expected.samples.shape
    np.testing.assert_allclose(written, expected.samples, rtol=0, atol=1e-4)
