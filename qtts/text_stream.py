r"""Tokenize text as an LLM writes it, committing only tokens that no later text can change.

`encode` runs in three stages, and each can look past the end of what has arrived so far:
  1. special tokens (`<|im_end|>` ...) are cut out of the raw text, so a tail like "<|im_" may yet become one;
  2. NFC normalization, so a combining mark or Hangul jamo arriving later can merge into the previous character;
  3. the pre-tokenizer regex, whose last match can still grow or split ("Hello  " becomes "Hello", " ", " world"
     once "world" arrives; "'" becomes "'s"; "\n" then " " is two pre-tokens until a "\n" makes it one).
BPE then merges only inside one pre-token, so a pre-token that is settled has settled tokens.

The rule: every pre-token but the last is settled, unless the boundary after it lies in the whitespace that
ends the text, or is a place NFC can reach across. Why: the regex has no look-behind, so matching after a
boundary does not depend on what came before it. Its letter, digit and punctuation alternatives are greedy over
one character class, so a match of theirs that ends before the end of the text has read at most the character
after it; one that failed by running into the end of the text only does so when the match chosen instead runs
to the end too. Only the whitespace alternatives read a whole run (`\s*[\r\n]+` backtracks to the run's last
newline, `\s+(?!\S)` to its last space before a non-space), and a run followed by a non-space is complete.
NFC cannot reach across a boundary before a character that is a starter (combining class 0), unchanged by NFC
and never the second half of a composition (Hangul medial vowels and finals, a few Indic vowel signs).
The NFC used here is Python's `unicodedata`; a character composing backward that only a newer Unicode version
knows would break the guarantee (none exists in the scripts Qwen3-TTS speaks).

Latency this implies: a word is committed when the character after it arrives. Chinese and Japanese runs
without punctuation are one pre-token (`\p{L}+`), so they commit at the next punctuation mark or space, or at
the end; committing sooner would change tokens, since Qwen2's vocabulary merges several Hanzi into one token.

Inside the prompt (checked on the real Qwen2 vocabulary as well as the test fixture's): the model reads
`<|im_start|>assistant\n{text}<|im_end|>\n...`. Special tokens split the text before normalization and
pre-tokenization, so `<|im_end|>` acts exactly as the end of the text, and BPE never merges across a
pre-token boundary. But the template's "\n" is one pre-token with the text's leading whitespace whenever that
whitespace holds a newline (`\s*[\r\n]+`): text "\nHi" gives [<|im_start|>, assistant, "\n\n", "Hi"], not
ids("\n") + ids("Hi"). Any other text tokenizes the same inside the template as alone. `AssistantTextStream`
tokenizes the template with the text, so its ids are upstream's in every case.
"""
from __future__ import annotations

import unicodedata
from functools import cache

from .text import TextTokenizer

ASSISTANT_OPENING = "<|im_start|>assistant\n"
ROLE_TOKENS = 3  # upstream's input_ids[:, :3]: <|im_start|>, assistant and the newline pre-token's first token


class IncrementalTokenizer:
    """Token ids of a text that arrives in pieces: over any split, append(...) + ... + end() == encode(text)."""

    def __init__(self, tokenizer: TextTokenizer):
        self._tokenizer = tokenizer
        self._special_tokens = tokenizer.special_tokens()
        self._pending = ""  # raw text whose tokens are not committed yet

    def append(self, text: str) -> list[int]:
        """Add a piece of text; return the ids it settled (possibly none, possibly of earlier pieces)."""
        self._pending += text
        settled = self._pending[:self._possible_special_start()]
        words = self._tokenizer.encode_words(settled)
        whitespace_tail = len(settled.rstrip())
        for index in range(len(words) - 1, 0, -1):  # never the last pre-token: it may still change
            cut = words[index][0]
            if cut <= whitespace_tail and _is_stable_starter(settled[cut]):
                self._pending = self._pending[cut:]
                return [token for _, ids in words[:index] for token in ids]
        return []

    def end(self) -> list[int]:
        """The text is complete: the ids of everything not committed yet."""
        ids = self.tentative()
        self._pending = ""
        return ids

    def tentative(self) -> list[int]:
        """The ids `end()` would return now: those of the text not committed yet, were it complete."""
        return self._tokenizer.encode(self._pending) if self._pending else []

    def _possible_special_start(self) -> int:
        """Where the longest tail of the pending text that could still grow into a special token begins."""
        for start in range(max(0, len(self._pending) - max(map(len, self._special_tokens), default=0)),
                           len(self._pending)):
            tail = self._pending[start:]
            if any(token.startswith(tail) for token in self._special_tokens):
                return start
        return len(self._pending)


class AssistantTextStream:
    """The ids of `assistant_template(text)` up to the text's end, as the text arrives.

    `ids` is always a prefix of `encode(assistant_template(text))` without the fixed closing ids (<|im_end|>,
    "\n", <|im_start|>, assistant, "\n"), and all of it once `end()` was called. As in upstream's prompt
    (engine/prompt.py, streaming mode), ids[:3] are the role rows and ids[3], the first text token, goes into
    the prefill with codec_bos; `trailing_ids` are fed one per decode step, then tts_eos after `end()`.
    The role ids settle only with the first non-whitespace character: leading newlines of the text join the
    template's newline.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self._tokens = IncrementalTokenizer(tokenizer)
        self.ids: list[int] = self._tokens.append(ASSISTANT_OPENING)
        self._has_word = False  # a non-whitespace character has arrived
        self._tentative: list[int] | None = None  # tentative_ids, until the text changes

    def append(self, text: str) -> list[int]:
        """Add a piece of the text; return the ids it settled."""
        new = self._tokens.append(text)
        self.ids += new
        self._has_word = self._has_word or bool(text.strip())
        self._tentative = None
        return new

    def end(self) -> list[int]:
        """The text is complete; return the last ids."""
        new = self._tokens.end()
        self.ids += new
        self._tentative = None
        return new

    def tentative_ids(self) -> list[int]:
        """What `ids` would be if the text ended here (without the closing ids): the settled ids, then the
        tentative ids of the rest, which more text may still change. Before the first word, just `ids`."""
        if self._tentative is None:
            self._tentative = self.ids + (self._tokens.tentative() if self._has_word else [])
        return self._tentative

    @property
    def prefill_ready(self) -> bool:
        """Whether the role ids and the first text id are settled, so the prompt's prefill can be built."""
        return len(self.ids) > ROLE_TOKENS

    @property
    def trailing_ids(self) -> list[int]:
        """The settled text ids after the first (upstream's input_ids[:, 4:-5] once the text ended)."""
        return self.ids[ROLE_TOKENS + 1:]


@cache
def _composes_backward() -> frozenset[str]:
    """Starters that NFC can merge into the character before them."""
    seconds = {chr(cp) for cp in [*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]}  # Hangul vowels, finals
    for cp in range(0x30000):  # canonical decompositions end below U+30000
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            second = chr(int(parts[1], 16))
            if unicodedata.combining(second) == 0:
                seconds.add(second)
    return frozenset(seconds)


def _is_stable_starter(char: str) -> bool:
    """Whether NFC of a text is NFC of the part before `char` followed by NFC of the rest, whatever follows."""
    first = unicodedata.normalize("NFD", char)[0]
    return (unicodedata.normalize("NFC", char) == char and unicodedata.combining(first) == 0
            and first not in _composes_backward())
