"""Fixture checkpoints: the hub layout, determinism, caching, and (oracle) upstream loads and runs them."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from qtts.checkpoint import check_layout
from qtts.config import SAMPLES_PER_FRAME, load_codec_config, load_model_config
from qtts.testing.configs import SPEAKER_IDS, codec_config, model_config
from qtts.testing.fixtures import fixture_dir, write_checkpoint
from qtts.testing.random_weights import random_tensor
from qtts.testing.tensors import codec_tensor_specs, lm_tensor_specs
from qtts.text import TextTokenizer, assistant_template, instruct_template

MODEL_TYPES = ("custom_voice", "voice_design", "base")
CASES = [(model_type, size) for size in ("tiny", "tiny-0.6b") for model_type in MODEL_TYPES]


def _file_shapes(path):
    with safe_open(str(path), framework="pt") as f:
        return {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tiny_checkpoint_has_the_hub_layout(model_type, request):
    folder = request.getfixturevalue(f"tiny_{model_type}")
    check_layout(folder)
    raw = json.loads((folder / "config.json").read_text())
    assert raw["tts_model_type"] == model_type and raw["tts_model_size"] == "1b7"
    assert ("speaker_encoder_config" in raw) == (model_type == "base")
    config = load_model_config(folder)
    assert config.talker.text_vocab_size == 151936
    assert config.talker.predictor.layers.hidden_size != config.talker.hidden_size  # projection path
    assert len(config.talker.language_ids) == (12 if model_type == "custom_voice" else 10)
    assert config.talker.speaker_ids == (SPEAKER_IDS if model_type == "custom_voice" else {})
    if model_type == "custom_voice":
        assert config.talker.speaker_dialects["eric"] == "sichuan_dialect"
        assert config.talker.speaker_dialects["dylan"] == "beijing_dialect"
    else:
        assert config.speakers == []
    if model_type == "base":
        assert config.speaker_encoder.enc_dim == config.talker.hidden_size
    assert load_codec_config(folder / "speech_tokenizer").decoder.samples_per_frame == SAMPLES_PER_FRAME
    lm = _file_shapes(folder / "model.safetensors")
    assert {name: shape for name, (shape, _) in lm.items()} == {s.name: s.shape for s in lm_tensor_specs(raw)}
    assert {dtype for _, dtype in lm.values()} == {"BF16"}
    codec = _file_shapes(folder / "speech_tokenizer/model.safetensors")
    codec_raw = json.loads((folder / "speech_tokenizer/config.json").read_text())
    assert {name: shape for name, (shape, _) in codec.items()} == \
        {s.name: s.shape for s in codec_tensor_specs(codec_raw)}
    assert {dtype for _, dtype in codec.values()} == {"F32"}


@pytest.mark.parametrize("model_type,size,tensors,params", [
    ("base", "0.6b", 478, 914_643_008),
    ("base", "1.7b", 480, 1_928_677_440),
    ("custom_voice", "0.6b", 402, 905_788_672),
    ("custom_voice", "1.7b", 404, 1_916_676_352),
])
def test_real_sizes_match_the_audited_tensor_counts(model_type, size, tensors, params):
    specs = lm_tensor_specs(model_config(model_type, size))
    assert (len(specs), sum(math.prod(s.shape) for s in specs)) == (tensors, params)


def test_real_codec_matches_the_audited_tensor_counts():
    specs = codec_tensor_specs(codec_config("1.7b"))
    decoder = [s for s in specs if s.name.startswith("decoder.")]
    assert (len(decoder), sum(math.prod(s.shape) for s in decoder)) == (271, 114_323_137)
    assert len(specs) - len(decoder) == 225


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = write_checkpoint(tmp_path / "a", "voice_design", "tiny", seed=3)
    b = write_checkpoint(tmp_path / "b", "voice_design", "tiny", seed=3)
    c = write_checkpoint(tmp_path / "c", "voice_design", "tiny", seed=4)
    for name in ("model.safetensors", "speech_tokenizer/model.safetensors", "vocab.json", "merges.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    spec = lm_tensor_specs(model_config("voice_design", "tiny"))[5]
    with safe_open(str(a / "model.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor(spec.name), random_tensor(spec, seed=3, dtype=torch.bfloat16))


def test_fixture_dir_writes_once(tmp_path, monkeypatch):
    monkeypatch.setenv("QTTS_FIXTURE_CACHE", str(tmp_path))
    folder = fixture_dir("custom_voice", "tiny-0.6b")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert fixture_dir("custom_voice", "tiny-0.6b") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folders left behind
    with pytest.raises(ValueError, match="size"):
        fixture_dir("custom_voice", "7b")


def test_tokenizer_keeps_the_real_ids(tiny_custom_voice):
    tokenizer = TextTokenizer.from_folder(tiny_custom_voice)
    ids = tokenizer.encode(assistant_template("Hello there, this is a test."))
    assert ids[:3] == [151644, 77091, 198] and ids[-5:] == [151645, 198, 151644, 77091, 198]
    assert tokenizer.encode(instruct_template("Speak warmly."))[:3] == [151644, 872, 198]
    assert tokenizer.encode("\n\n") == [271]
    assert tokenizer.encode("<tts_pad><tts_text_bos><tts_text_eod><|audio_pad|>") == [151671, 151672, 151673, 151675]
    assert len(tokenizer.encode(" the world is here")) == 4  # common words are single tokens
    vocab = json.loads((tiny_custom_voice / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(151643))  # dense: transformers numbers added tokens after it


# --- upstream (the oracle) loads every fixture strictly and runs it ------------------------------

@pytest.fixture(scope="module")
def upstream_loader():
    from tests.oracle import require_oracle

    require_oracle()
    from qwen_tts import Qwen3TTSModel

    def load(folder):
        model = Qwen3TTSModel.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)
        codes = []
        original = model.model.generate

        def generate(*args, **kwargs):
            result = original(*args, **kwargs)
            codes.append(result[0][0])
            return result

        model.model.generate = generate
        return model, codes

    return load


def _assert_file_equals_state(module, path):
    """Every persistent parameter/buffer comes from the file, and the file holds nothing else."""
    state = module.state_dict()
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(state), (set(f.keys()) ^ set(state))
        for name in f.keys():
            assert torch.equal(f.get_tensor(name).float(), state[name].float()), name


def _reference_audio():
    t = np.arange(48000) / 24000
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (wave + 0.02 * np.random.default_rng(3).standard_normal(t.shape)).astype(np.float32), 24000


@pytest.mark.oracle
@pytest.mark.parametrize("model_type,size", CASES)
def test_upstream_loads_and_generates(model_type, size, upstream_loader):
    folder = fixture_dir(model_type, size)
    upstream, codes = upstream_loader(folder)
    _assert_file_equals_state(upstream.model, folder / "model.safetensors")
    _assert_file_equals_state(upstream.model.speech_tokenizer.model, folder / "speech_tokenizer/model.safetensors")
    text, frames = "Hello there, this is a fixture test.", 8
    greedy = dict(language="english", do_sample=False, subtalker_dosample=False, max_new_tokens=frames + 1)
    if model_type == "custom_voice":
        wavs, _ = upstream.generate_custom_voice(text, speaker="aiden", instruct="Speak slowly.", **greedy)
    elif model_type == "voice_design":
        wavs, _ = upstream.generate_voice_design(text, instruct="A deep, calm voice.", **greedy)
    else:
        items = upstream.create_voice_clone_prompt(ref_audio=_reference_audio(), ref_text="The reference words.")
        assert items[0].ref_spk_embedding.shape == (load_model_config(folder).talker.hidden_size,)
        ref_codes = items[0].ref_code
        assert ref_codes.shape == (25, 16) and 0 <= int(ref_codes.min()) and int(ref_codes.max()) < 2048
        assert len(torch.unique(ref_codes)) > 100  # the reference is not quantized to one code
        wavs, _ = upstream.generate_voice_clone(text, voice_clone_prompt=items, **greedy)
    generated = codes[-1]
    assert generated.shape == (frames, 16)  # no early EOS
    assert len(torch.unique(generated[:, 0])) >= frames - 2  # varied, not stuck on one code
    assert all(len(torch.unique(generated[:, q])) >= frames - 2 for q in range(1, 16))
    wave = wavs[0]
    assert wave.shape == (frames * SAMPLES_PER_FRAME,)
    assert 0.05 < np.sqrt(np.mean(wave ** 2)) < 0.7 and np.mean(np.abs(wave) >= 0.999) < 0.02


@pytest.mark.oracle
def test_upstream_tokenizer_agrees(tiny_custom_voice, upstream_loader):
    upstream, _ = upstream_loader(tiny_custom_voice)
    ours = TextTokenizer.from_folder(tiny_custom_voice)
    texts = ["Hello there, this is a parity test of the talker.", "\nA leading newline", "  two spaces",
             "你好，世界！", "emoji 🎉 fine", "It's 12345, don't.", "a <|im_end|> inside", "tabs\tand\r\nCRLF"]
    for text in texts:
        for prompt in (assistant_template(text), instruct_template(text)):
            theirs = upstream.processor(text=prompt, return_tensors="pt", padding=True)["input_ids"][0].tolist()
            assert ours.encode(prompt) == theirs, prompt
