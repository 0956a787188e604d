"""Prompt memo: a voice's text-independent prompt rows are built once per model, and every prompt keeps its bits."""
import pytest
import torch

from qtts.api import TTS
from qtts.engine import planning
from qtts.engine.planning import plan_request
from qtts.engine.prefix_cache import prefix_key
from qtts.engine.prompt import PromptMemo, VoiceRows, build_prompt
from qtts.text_stream import AssistantTextStream
from tests.engine.clone_voices import clone_voices, voice_request

TEXTS = ("Hello there, this is the first sentence.", "Quite another text.", "\nA text after a newline.")
VOICES = [  # (fixture, request options)
    ("tiny_custom_voice", dict(speaker="aiden", language="english")),
    ("tiny_custom_voice", dict(speaker="eric", language="chinese")),
    ("tiny_custom_voice", dict(speaker="aiden", instruct="Speak slowly.")),
    ("tiny_voice_design", dict(instruct="A deep, calm voice.", language="english")),
    ("tiny_base", dict(voice="xvector", language="english")),
    ("tiny_base", dict(voice="icl", language="english")),
]


@pytest.fixture(scope="module")
def load(request):
    """load(fixture name, dtype) -> TTS (with a prefix cache, so its memo keeps prefix keys), one per pair."""
    loaded = {}

    def get(name: str, dtype: str) -> TTS:
        if (name, dtype) not in loaded:
            loaded[name, dtype] = TTS.from_pretrained(request.getfixturevalue(name), device="cpu", dtype=dtype)
        return loaded[name, dtype]

    return get


@pytest.fixture(scope="module")
def voices(load):
    return clone_voices(load("tiny_base", "fp32"))


def _assert_same(memoized, plain):
    for name in ("prefill", "trailing", "pad_row"):
        ours, theirs = getattr(memoized, name), getattr(plain, name)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), name
    assert memoized.shared_length == plain.shared_length


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("non_streaming", [True, False])
@pytest.mark.parametrize("name, options", VOICES)
def test_a_memoized_prompt_has_the_bits_of_a_plain_one(load, voices, name, options, non_streaming, dtype):
    tts = load(name, dtype)
    memo = PromptMemo()
    for _ in range(2):  # a miss, then hits
        for text in TEXTS:
            request = voice_request(tts, voices, options, text, non_streaming_mode=non_streaming)
            plain = build_prompt(tts.talker, tts.config, tts.tokenizer, request)
            memoized = build_prompt(tts.talker, tts.config, tts.tokenizer, request, memo=memo)
            _assert_same(memoized, plain)
            if options.get("voice") == "icl":
                assert memoized.shared_key is None and len(memo) == 0  # its shared rows hold the transcript
            else:
                assert memoized.shared_key == prefix_key(plain.prefill[: plain.shared_length])
    if options.get("voice") != "icl":
        assert len(memo) == 2  # the leading newline joins the role ids: another entry


@pytest.mark.parametrize("name, options", VOICES)
def test_a_plan_of_open_text_reuses_the_voice_rows(load, voices, name, options):
    tts = load(name, "fp32")
    tts.model.prompt_memo = PromptMemo()
    stream = AssistantTextStream(tts.tokenizer)
    stream.append(TEXTS[0][:14])
    text_so_far = (list(stream.ids), False, TEXTS[0][:14])
    request = voice_request(tts, voices, options, TEXTS[0], non_streaming_mode=False, text_open=True)
    plain = build_prompt(tts.talker, tts.config, tts.tokenizer, request, list(stream.ids))
    for _ in range(2):
        plan = plan_request(tts.model, request, tts.max_len, text_so_far)
        _assert_same(plan.prompt, plain)
        assert plan.prompt.shared_key == prefix_key(plain.prefill[: plain.shared_length])


def test_a_memoized_plan_does_not_hash_its_rows_again(load, monkeypatch):
    tts = load("tiny_custom_voice", "fp32")
    tts.model.prompt_memo = PromptMemo()
    requests = [tts.request(text, speaker="aiden", greedy=True) for text in TEXTS[:2]]
    first = plan_request(tts.model, requests[0], tts.max_len)
    hashed = []
    monkeypatch.setattr(planning, "prefix_key", lambda rows: hashed.append(rows) or b"")
    second = plan_request(tts.model, requests[1], tts.max_len)
    assert hashed == [] and second.prompt.shared_key == first.prompt.shared_key is not None


def test_voices_do_not_share_entries(load, voices):
    """Speakers, instructions and clone embeddings each get their own rows; an equal embedding finds them."""
    tts = load("tiny_custom_voice", "fp32")
    memo = PromptMemo()
    prompts = [build_prompt(tts.talker, tts.config, tts.tokenizer, tts.request(TEXTS[0], **options), memo=memo)
               for options in (dict(speaker="aiden"), dict(speaker="eric"), dict(speaker="aiden", instruct="Loudly."))]
    assert len(memo) == 3 and len({p.shared_key for p in prompts}) == 3

    base, voice = load("tiny_base", "fp32"), voices["xvector"]
    memo = PromptMemo()
    for embedding, entries in ((voice.speaker_embedding, 1), (voice.speaker_embedding.clone(), 1),
                               (voice.speaker_embedding + 1, 2)):
        request = base.request(TEXTS[1], voice=type(voice)(embedding))
        build_prompt(base.talker, base.config, base.tokenizer, request, memo=memo)
        assert len(memo) == entries


def test_each_model_has_its_own_memo(load):
    assert load("tiny_custom_voice", "fp32").model.prompt_memo is not load("tiny_base", "fp32").model.prompt_memo


def test_the_memo_drops_the_least_recently_used_beyond_its_size():
    def rows(value: float) -> VoiceRows:
        row = torch.full((1, 1, 1), value)
        return VoiceRows(shared=row, bos_row=row, eos_row=row, pad_row=row, codec_pad=row, codec_bos=row)

    memo = PromptMemo(size=2)
    memo.store("a", rows(1))
    memo.store("b", rows(2))
    assert memo.lookup("a").shared.item() == 1  # now the most recently used
    memo.store("c", rows(3))
    assert len(memo) == 2 and memo.lookup("b") is None
    assert memo.lookup("a").shared.item() == 1 and memo.lookup("c").shared.item() == 3
