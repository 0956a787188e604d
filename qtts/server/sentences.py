"""Cut text that arrives piece by piece (as an LLM writes it) into sentences to speak one by one."""
from __future__ import annotations

import re

# A sentence ends at . ! ? … followed by whitespace (so "3.14" and "e.g.x" do not end one), at CJK
# full stops at once, or at a line break. Closing quotes and brackets stay with their sentence.
_BOUNDARY = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s)|[。！？；]+["'”’」』)\]]*|\n+""")
_LAST_WORD = re.compile(r"([\w.]+)$")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "fig", "approx"}
_SOFT_BREAKS = (", ", "; ", ": ", "，", "、", " ")


class SentenceSplitter:
    """Buffers text; `feed` returns the sentences it completes, `flush` the rest.

    A run of text longer than max_chars without a sentence end is cut at its last comma or space,
    so a listener never waits for an endless sentence.
    """

    def __init__(self, max_chars: int = 300):
        self.max_chars = max_chars
        self.buffer = ""

    def feed(self, text: str) -> list[str]:
        self.buffer += text
        sentences, start = [], 0
        for match in _BOUNDARY.finditer(self.buffer):
            if match.group() == "." and _is_abbreviation(self.buffer[start:match.start()]):
                continue
            sentences.append(self.buffer[start:match.end()])
            start = match.end()
        self.buffer = self.buffer[start:]
        while len(self.buffer) > self.max_chars:
            cut = _soft_cut(self.buffer[:self.max_chars])
            sentences.append(self.buffer[:cut])
            self.buffer = self.buffer[cut:]
        return [s.strip() for s in sentences if _speakable(s)]

    def flush(self) -> str | None:
        """Everything still buffered, as one sentence (None if there is nothing to say)."""
        rest, self.buffer = self.buffer.strip(), ""
        return rest if _speakable(rest) else None

    def clear(self) -> None:
        self.buffer = ""


def _is_abbreviation(before: str) -> bool:
    word = _LAST_WORD.search(before)
    return word is not None and (word.group(1).lower() in ABBREVIATIONS or len(word.group(1)) == 1)


def _soft_cut(text: str) -> int:
    for mark in _SOFT_BREAKS:
        at = text.rfind(mark)
        if at > len(text) // 2:
            return at + len(mark)
    return len(text)


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)
