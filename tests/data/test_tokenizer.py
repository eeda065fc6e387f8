import numpy as np
import pytest

from mmjax.data import shapes
from mmjax.data.tokenizer import ByteTokenizer, Tokenizer, WordTokenizer, get_tokenizer


@pytest.fixture(scope="module")
def words():
    return WordTokenizer.for_shapes()


def _all_texts(n=60):
    texts = [t.format(name) for t in shapes.PROMPT_TEMPLATES for name in shapes.CLASS_NAMES]
    for split in shapes.SPLITS:
        for i in range(n):
            ex = shapes.generate_example(0, split, i)
            texts += ex["captions"] + ex["questions"] + ex["answers"]
    return texts


def test_word_round_trip_and_no_unknown_words(words):
    for text in _all_texts():
        ids = words.encode(text)
        assert words.unk_id not in ids, text
        assert words.decode(ids) == WordTokenizer.normalize(text)
    assert words.decode(words.encode("what colour is the star?")) == "what colour is the star"


def test_word_vocab_is_deterministic_with_specials_first(words):
    assert words.itos[:4] == ["[PAD]", "[BOS]", "[EOT]", "[UNK]"]
    assert (words.pad_id, words.bos_id, words.eot_id, words.unk_id) == (0, 1, 2, 3)
    assert words.itos == WordTokenizer.for_shapes().itos and words.vocab_size == len(words.itos)
    assert words.itos[4 : words.image_id] == sorted(words.itos[4 : words.image_id])


def test_vlm_specials_and_late_words_come_last_and_change_no_existing_id(words):
    # The ids as they were before IMG and SEP existed (a CLIP model trained on them must keep working),
    # then IMG and SEP as they were before the two-image words existed (the fusion runs' ids).
    before = ["[PAD]", "[BOS]", "[EOT]", "[UNK]"] + sorted(shapes.vocabulary())
    assert (
        words.itos == before + ["[IMG]", "[SEP]", "first", "second"] and words.vocab_size == len(before) + 4
    )
    assert (words.image_id, words.sep_id) == (len(before), len(before) + 1) == (65, 66)
    assert words.encode("in the second image") == [
        words.stoi["in"],
        words.stoi["the"],
        68,
        words.stoi["image"],
    ]
    assert WordTokenizer(["b", "a", "first"], late_words=["first"]).itos[4:] == [
        "a",
        "b",
        "[IMG]",
        "[SEP]",
        "first",
    ]
    tok = ByteTokenizer()
    assert (tok.image_id, tok.sep_id, tok.vocab_size) == (259, 260, 261)
    assert tok.encode("a\u00ff") == [ord("a") + 3, 0xC3 + 3, 0xBF + 3]  # byte ids unchanged


@pytest.mark.parametrize("tok", [WordTokenizer.for_shapes(), ByteTokenizer()], ids=["words", "bytes"])
def test_vlm_specials_are_dropped_by_decode_and_never_encoded(tok):
    ids = [
        tok.bos_id,
        tok.image_id,
        tok.image_id,
        *tok.encode("what colour"),
        tok.sep_id,
        *tok.encode("red"),
        tok.eot_id,
        tok.pad_id,
    ]
    assert tok.decode(ids) == ("what colour red" if isinstance(tok, WordTokenizer) else "what colourred")
    for text in ["[IMG] [SEP]", "[img]", *_all_texts(5)]:
        assert not {tok.image_id, tok.sep_id} & set(tok.encode(text))


def test_unknown_word_maps_to_unk(words):
    ids = words.encode("A Zebra, in the center.")
    assert ids[1] == words.unk_id and words.unk_id not in ids[:1] + ids[2:]
    assert words.decode(ids) == "a [UNK] in the center"


@pytest.mark.parametrize("tok", [WordTokenizer.for_shapes(), ByteTokenizer()], ids=["words", "bytes"])
def test_tokenize_layout_and_truncation(tok):
    long_text = " ".join(["red circle"] * 40)
    out, truncated = tok.tokenize(["a red circle", long_text, ""], max_len=16, return_truncated=True)
    assert out.dtype == np.int32 and out.shape == (3, 16)
    assert (out[:, 0] == tok.bos_id).all()
    assert ((out == tok.eot_id).sum(axis=1) == 1).all()
    assert truncated.tolist() == [False, True, False]
    assert out[1, -1] == tok.eot_id and (out[1] != tok.pad_id).all()
    for row in out:
        eot = int(np.argmax(row == tok.eot_id))
        assert (row[eot + 1 :] == tok.pad_id).all() and (row[1:eot] != tok.pad_id).all()
    assert tok.decode(out[0]) == "a red circle"
    np.testing.assert_array_equal(tok.tokenize(["a red circle"], 16), out[:1])


def test_tokenize_errors():
    with pytest.raises(TypeError, match="sequence of strings"):
        ByteTokenizer().tokenize("a red circle", 8)
    with pytest.raises(ValueError, match="at least 2"):
        ByteTokenizer().tokenize(["a"], 1)


def test_byte_round_trip_unicode():
    tok = ByteTokenizer()
    text = "naïve café — 東京 🚀"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.tokenize([text], 64)[0]) == text
    assert max(tok.encode(text)) < tok.vocab_size and min(tok.encode(text)) > tok.eot_id


def test_get_tokenizer():
    assert isinstance(get_tokenizer("shapes_words"), WordTokenizer)
    assert isinstance(get_tokenizer("bytes"), Tokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'; valid names: bytes, shapes_words"):
        get_tokenizer("bpe")


def test_canonical_captions_fit_default_max_len(words):
    # The longest canonical caption (3 objects, "top left"-style positions) is 30 words + BOS + EOT.
    texts = [
        c
        for split in shapes.SPLITS
        for i in range(200)
        for c in shapes.generate_example(0, split, i)["captions"]
    ]
    _, truncated = words.tokenize(texts, 32, return_truncated=True)
    assert not truncated.any()
