"""The Qwen2 byte-level BPE tokenizer and the chat templates the model was trained on."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from .errors import CheckpointError

PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def assistant_template(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"


def reference_template(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


def instruct_template(instruct: str) -> str:
    return f"<|im_start|>user\n{instruct}<|im_end|>\n"


class TextTokenizer:
    """Encodes text exactly as upstream's Qwen2TokenizerFast does (no special tokens added)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer

    @classmethod
    def from_folder(cls, folder: Path) -> "TextTokenizer":
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
        vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
        for file in (vocab_file, merges_file):
            if not file.is_file():
                raise CheckpointError(f"missing tokenizer file {file.name} in {folder}")
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        added = _added_tokens(folder)
        # Specials live in the vocab at their declared ids, so id gaps cannot shift them.
        vocab.update({token.content: token_id for token_id, token in added})
        merges = []
        for line in merges_file.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#version"):
                left, right = line.split(" ")
                merges.append((left, right))
        tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                  continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                  byte_fallback=False))
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([token for _, token in added])
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_tensor(self, text: str) -> torch.Tensor:
        """(1, n) int64, the shape upstream slices."""
        return torch.tensor([self.encode(text)], dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def encode_words(self, text: str) -> list[tuple[int, list[int]]]:
        """`encode(text)` grouped by pre-token (a special token is a group of its own), each group with
        the character offset in `text` where it starts."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        words: list[tuple[int, list[int]]] = []
        previous = None
        for token_id, word, (start, _) in zip(encoding.ids, encoding.word_ids, encoding.offsets):
            if not words or word is None or word != previous:
                words.append((start, []))
            words[-1][1].append(token_id)
            previous = word
        return words

    def special_tokens(self) -> list[str]:
        """The added tokens' texts, which `encode` matches in raw text before anything else."""
        return [token.content for token in self._tokenizer.get_added_tokens_decoder().values()]


def _added_tokens(folder: Path) -> list[tuple[int, AddedToken]]:
    """(id, token) for the special tokens declared in tokenizer_config.json."""
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        raise CheckpointError(f"missing tokenizer_config.json in {folder}")
    decoder = json.loads(config_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
    tokens = []
    for token_id, spec in sorted(decoder.items(), key=lambda item: int(item[0])):
        tokens.append((int(token_id), AddedToken(spec["content"], single_word=spec.get("single_word", False),
                                 lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                                 normalized=spec.get("normalized", False), special=True)))
    return tokens
