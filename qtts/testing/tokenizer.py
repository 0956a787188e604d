"""A small Qwen2 byte-level BPE tokenizer with the real token ids that Qwen3-TTS depends on.

Ids 0..255 are the byte alphabet in Qwen2's order (so "\\n" is 198), `user` is 872,
`assistant` 77091 and "\\n\\n" 271, as in the real vocabulary; the 33 added tokens sit at
151643..151675. BPE is learnt from a few hundred common English words (each a single token), so
prompts have realistic lengths.
Unused ids below 151643 are filled with unreachable placeholders: transformers numbers added
tokens after the last vocabulary id, so the vocabulary must be dense.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE

from ..text import PRETOKENIZE_REGEX

VOCAB_SIZE = 151643  # regular tokens; the added ones follow
FIXED_IDS = {"ĊĊ": 271, "user": 872, "assistant": 77091}

# (content, special) at 151643, 151644, ... in the order of the real tokenizer.
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False), ("<|audio_start|>", True), ("<|audio_end|>", True),
    ("<tts_pad>", True), ("<tts_text_bos>", True), ("<tts_text_eod>", True), ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
]

WORDS = """the of and to in is you that it he was for on are as with his they at be this have from or one had by
word but not what all were we when your can said there use an each which she do how their if will up other about
out many then them these so some her would make like him into time has look two more write go see number no way
could people my than first water been call who its now find long down day did get come made may part over new
sound take only little work know place year live me back give most very after thing our just name good sentence
man think say great where help through much before line right too mean old any same tell boy follow came want show
also around form three small set put end does another well large must big even such because turn here why ask went
men read need land different home us move try kind hand picture again change off play spell air away animal house
point page letter mother answer found study still learn should world hello voice speak speech today test talk
story calm deep warm slow fast quick happy please thank morning evening""".split()


def byte_alphabet() -> list[str]:
    """The 256 byte characters of byte-level BPE, in Qwen2's (GPT-2's) id order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]


def build_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (dense ids 0..151642) and merges, learnt by byte-level BPE from WORDS."""
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # The template pieces occur as often as everything else together, so they are merged first and whole.
    corpus = [" ".join(WORDS), " ".join(word.capitalize() for word in WORDS)] + ["assistant\n", "user\n\n"] * len(WORDS)
    tokenizer.train_from_iterator(corpus, trainer)
    merges = [tuple(pair.split(" ") if isinstance(pair, str) else pair)
              for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
    vocab = {char: i for i, char in enumerate(byte_alphabet())}
    free = (i for i in range(len(vocab), VOCAB_SIZE) if i not in FIXED_IDS.values())
    for token in dict.fromkeys(left + right for left, right in merges):
        vocab[token] = FIXED_IDS.get(token) or next(free)
    missing = [token for token in FIXED_IDS if token not in vocab]
    if missing:
        raise RuntimeError(f"BPE training did not learn {missing} as single tokens")
    vocab.update({f"<unused{i}>": i for i in free})
    return dict(sorted(vocab.items(), key=lambda item: item[1])), merges


def tokenizer_config() -> dict:
    decoder = {str(VOCAB_SIZE + i): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": special}
               for i, (content, special) in enumerate(ADDED_TOKENS)}
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": [c for c, special in ADDED_TOKENS[1:] if special],
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


def write_tokenizer(folder: Path) -> None:
    """vocab.json, merges.txt and tokenizer_config.json, as the hub ships them."""
    vocab, merges = build_vocab_and_merges()
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False),
                                                  encoding="utf-8")
