import time

import pytest

from qtts.server.sentences import SentenceSplitter


def feed_all(splitter, pieces):
    sentences = []
    for piece in pieces:
        sentences += splitter.feed(piece)
    return sentences


def test_sentences_complete_as_pieces_arrive():
    splitter = SentenceSplitter()
    assert feed_all(splitter, ["Hello", " there.", " How are", " you? Fine"]) == ["Hello there.", "How are you?"]
    assert splitter.flush() == "Fine"
    assert splitter.flush() is None


def test_decimals_abbreviations_and_initials_do_not_end_a_sentence():
    splitter = SentenceSplitter()
    text = "Dr. Smith paid 3.14 dollars to J. Doe. Then e.g. nothing! "
    assert feed_all(splitter, [text]) == ["Dr. Smith paid 3.14 dollars to J. Doe.", "Then e.g. nothing!"]


def test_cjk_stops_end_at_once_and_closing_quotes_stay():
    splitter = SentenceSplitter()
    assert feed_all(splitter, ["你好。世界！", 'He said "go." Then']) == ["你好。", "世界！", 'He said "go."']


def test_long_runs_are_cut_at_a_comma_and_punctuation_only_is_dropped():
    splitter = SentenceSplitter(max_chars=40)
    sentences = feed_all(splitter, ["a" * 25 + ", " + "b " * 20])
    assert sentences[0] == "a" * 25 + ","
    assert all(len(s) <= 40 for s in sentences)
    assert feed_all(SentenceSplitter(), ["... !! \n"]) == []


@pytest.mark.parametrize("unit", [".", "x. ", "a", "Dr. ", ".)", "a.b!c?d ", "\n"])
def test_feeding_is_linear_in_the_text(unit):
    text = unit * (40_000 // len(unit))  # a runaway message: seconds to minutes for a quadratic splitter
    splitter = SentenceSplitter()
    started = time.perf_counter()
    sentences = splitter.feed(text)
    assert time.perf_counter() - started < 1.0
    assert all(len(s) <= splitter.max_chars for s in sentences) and len(splitter.buffer) <= splitter.max_chars


def test_a_long_sentence_before_its_stop_is_cut_too():
    splitter = SentenceSplitter(max_chars=40)
    sentences = splitter.feed("word " * 30 + "end. Next")
    assert all(len(s) <= 40 for s in sentences) and sentences[-1].endswith("end.")
    assert " ".join(sentences).split() == ("word " * 30 + "end.").split()
