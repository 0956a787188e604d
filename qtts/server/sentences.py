"""Cut text that arrives piece by piece (as an LLM writes it) into sentences to speak one by one.

Linear in the text fed: a match never starts inside a run of stops (where each start would rescan the
run), abbreviations are looked for in a bounded window, and long runs are cut by index.
"""
from __future__ import annotations

import re

# A sentence ends at . ! ? … followed by whitespace (so "3.14" and "e.g.x" do not end one), at CJK
# full stops at once, or at a line break. Closing quotes and brackets stay with their sentence.
_BOUNDARY = re.compile(r"""(?<![.!?…])[.!?…]+["'”’)\]]*(?=\s)|[。！？；]+["'”’」』)\]]*|\n+""")
_LAST_WORD = re.compile(r"([\w.]+)$")
_ABBREVIATION_WINDOW = 32  # chars before a "." searched for an abbreviation: longer words never are one
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
            window = self.buffer[max(start, match.start() - _ABBREVIATION_WINDOW):match.start()]
            if match.group() == "." and _is_abbreviation(window):
                continue
            sentence = self.buffer[start:match.end()]
            cut = self._cut_long(sentence)
            sentences += [*cut, sentence[sum(map(len, cut)):]]
            start = match.end()
        rest = self.buffer[start:]
        cut = self._cut_long(rest)
        self.buffer = rest[sum(map(len, cut)):]
        return [s.strip() for s in sentences + cut if _speakable(s)]

    def flush(self) -> str | None:
        """Everything still buffered, as one sentence (None if there is nothing to say)."""
        rest, self.buffer = self.buffer.strip(), ""
        return rest if _speakable(rest) else None

    def clear(self) -> None:
        self.buffer = ""

    def _cut_long(self, text: str) -> list[str]:
        """Leading pieces of at most max_chars, cut at soft breaks, until what remains fits."""
        pieces, at = [], 0
        while len(text) - at > self.max_chars:
            end = at + _soft_cut(text[at:at + self.max_chars])
            pieces.append(text[at:end])
            at = end
        return pieces


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
