"""Incremental tokenization gives the one-shot ids over any split of the text."""
import random

import pytest
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from qtts.text import PRETOKENIZE_REGEX, TextTokenizer, assistant_template
from qtts.text_stream import AssistantTextStream, IncrementalTokenizer

CLOSING = "<|im_end|>\n<|im_start|>assistant\n"  # what follows the text in the prompt
# Pieces that exercise every pre-tokenizer alternative, NFC and the special tokens, glued at random.
FRAGMENTS = [
    "Hello", " world", "the", " quick", "fox", "It's", "don't", "'S", "'ll", "'", "we'RE", " I", "a",
    "你好", "世界", "今天天气很好", "，", "。", "！", "こんにちは", "안녕하세요", "Привет", "مرحبا", "नमस्ते",
    "😀", "👍🏽", "👩\u200d👩\u200d👧", "🇺🇸", "❤\ufe0f", "\u200d",
    "0", "7", "42", "3.14", "1,000", "2024-05-01", "½", "²", "٣",
    ".", ",", "!", "?", "...", "—", "(", ")", "\"", "#", "$", "%", " -", "--", "@", ":)",
    " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u2000", "\u3000",
    "e\u0301", "\u0301", "\u0323", "\u0316", "q", "A\u030a", "\u212b",
    "\u1100", "\u1161", "\u11a8", "\u0b47", "\u0b3e", "\u0dd9", "\u0dcf",
    "<", "|", ">", "<|", "im_end", "|>", "<|im_end|>", "<|im_start|>", "<tts_pad>", "<think>", "</think>",
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14)))


def random_split(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 8)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def learnt_tokenizer(special_tokens: list[str]) -> TextTokenizer:
    """Qwen2's pipeline with BPE learnt from the fragments: nearly every pre-token is one token, so a wrong
    split changes the ids (the fixture's English-word vocabulary would hide most)."""
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [random_text(rng) for _ in range(3000)] + ["assistant\n"] * 300
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=20000, show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.add_special_tokens(special_tokens)
    return TextTokenizer(tokenizer)


@pytest.fixture(scope="module", params=["fixture", "learnt"])
def tokenizer(request, tiny_custom_voice):
    fixture = TextTokenizer.from_folder(tiny_custom_voice)
    return fixture if request.param == "fixture" else learnt_tokenizer(fixture.special_tokens())


def streamed(tokenizer: TextTokenizer, pieces: list[str]) -> list[int]:
    stream = IncrementalTokenizer(tokenizer)
    return [token for piece in pieces for token in stream.append(piece)] + stream.end()


def test_committed_ids_equal_one_shot_ids_over_random_splits(tokenizer):
    rng = random.Random(18)
    for _ in range(1000):
        text = random_text(rng)
        pieces = random_split(rng, text)
        assert streamed(tokenizer, pieces) == tokenizer.encode(text), pieces


def test_one_character_at_a_time(tokenizer):
    rng = random.Random(7)
    for _ in range(200):
        text = random_text(rng)
        assert streamed(tokenizer, list(text)) == tokenizer.encode(text), text


@pytest.mark.parametrize("pieces", [
    ["Hello", "  ", "world"],             # a space run splits once the word after it arrives
    ["it", "'", "s"],                     # "'" grows into the contraction "'s"
    ["cafe", "\u0301", " ok"],            # the accent composes with the letter before it (NFC)
    ["e\u0316", "\u0301"],                # ... even past a mark of lower combining class
    ["\u1100", "\u1161", "\u11a8"],       # Hangul jamo compose into one syllable
    ["a <|im", "_end|> b"],               # a special token arriving in two pieces
    ["line", "\n", "\n", "next"],         # a newline run
    ["ok\n", " ", "\n", "x"],              # "\n", " " are two pre-tokens until a newline ends the run
    ["12", "34"],                         # digits are one pre-token each
])
def test_pieces_that_change_earlier_text(tokenizer, pieces):
    assert streamed(tokenizer, pieces) == tokenizer.encode("".join(pieces))


def test_a_word_is_committed_when_the_next_character_arrives(tokenizer):
    stream = IncrementalTokenizer(tokenizer)
    assert stream.append("Hello") == []
    assert stream.append(" wor") == tokenizer.encode("Hello")
    assert stream.append("ld") == []
    assert stream.append(",") == tokenizer.encode(" world")
    assert stream.end() == tokenizer.encode(",")


def test_assistant_stream_ids_are_the_prompt_ids(tokenizer):
    rng = random.Random(3)
    for _ in range(500):
        text = random_text(rng)
        if rng.random() < 0.2:
            text = rng.choice(["\n", " \n", "\n\n ", "  "]) + text
        stream = AssistantTextStream(tokenizer)
        for piece in random_split(rng, text):
            stream.append(piece)
            assert stream.ids == tokenizer.encode(assistant_template(text))[:len(stream.ids)]
        stream.end()
        assert stream.ids + tokenizer.encode(CLOSING) == tokenizer.encode(assistant_template(text)), text


def test_leading_newlines_join_the_template_newline(tokenizer):
    """Why the stream tokenizes the template with the text: upstream's ids differ from the text's own."""
    prompt_ids = tokenizer.encode(assistant_template("\nHi"))
    assert prompt_ids[3:-5] != tokenizer.encode("\nHi")
    stream = AssistantTextStream(tokenizer)
    stream.append("\n")
    assert not stream.prefill_ready
    stream.append("Hi there")
    assert stream.prefill_ready
    assert stream.ids[:4] == prompt_ids[:4]


def test_prefill_is_ready_after_the_first_word(tokenizer):
    stream = AssistantTextStream(tokenizer)
    stream.append("Hello")
    assert not stream.prefill_ready
    stream.append(" ")
    assert stream.prefill_ready
    assert stream.ids[3:] == tokenizer.encode("Hello")
    stream.append("world.")
    stream.end()
    prompt_ids = tokenizer.encode(assistant_template("Hello world."))
    assert stream.trailing_ids == prompt_ids[4:len(prompt_ids) - len(tokenizer.encode(CLOSING))]


def test_tentative_ids_are_the_ids_if_the_text_ended_here(tokenizer):
    rng = random.Random(5)
    for _ in range(300):
        text = random_text(rng)
        stream = AssistantTextStream(tokenizer)
        so_far = ""
        for piece in random_split(rng, text):
            stream.append(piece)
            so_far += piece
            tentative = stream.tentative_ids()
            assert tentative[:len(stream.ids)] == stream.ids
            if so_far.strip():
                assert tentative + tokenizer.encode(CLOSING) == tokenizer.encode(assistant_template(so_far)), so_far
            else:  # no word yet: nothing to start on
                assert tentative == stream.ids


def test_tentative_ids_of_a_word_not_settled(tokenizer):
    stream = AssistantTextStream(tokenizer)
    stream.append("\n")
    assert stream.tentative_ids() == stream.ids and not stream.prefill_ready
    stream.append("Hello")
    assert not stream.prefill_ready
    assert stream.tentative_ids()[3:] == tokenizer.encode("Hello")
