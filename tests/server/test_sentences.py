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
