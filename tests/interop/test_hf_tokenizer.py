"""A tokenizer.json loaded with the `tokenizers` package gives the ids of transformers' CLIP tokenizer,
built offline from a tiny byte-level BPE vocabulary written here (no download)."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
from helpers import require  # importorskip, but an error under CI=true

require("tokenizers")
transformers = require("transformers")

from mmjax.data.tokenizer import Tokenizer  # noqa: E402
from mmjax.interop import hf  # noqa: E402

MAX_LEN = 12
TEXTS = [
    "a photo of a cat",
    "The CAT sat on THE mat.",  # case: CLIP lowercases
    "cat,dog;  bird!? (abc) -- 'x'",  # punctuation and runs of spaces
    "Ünïcode café — 日本語 😀",  # accents, CJK, an emoji: byte-level fallback
    "the cat " * 20,  # too long: truncated to MAX_LEN, EOS kept last
    "",
]
MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("a", "b"),
    ("ab", "c</w>"),
    ("o", "f</w>"),
]


@pytest.fixture(scope="module")
def tokenizers_pair(tmp_path_factory):
    """(transformers' CLIPTokenizerFast, mmjax's HfTokenizer from the tokenizer.json it saved)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + [a + b for a, b in MERGES])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    src = tmp_path_factory.mktemp("bpe")
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    reference = transformers.CLIPTokenizerFast(vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"))
    out = tmp_path_factory.mktemp("saved")
    reference.save_pretrained(str(out))
    return reference, hf.load_tokenizer(str(out))


def test_interface_and_special_ids(tokenizers_pair):
    reference, tok = tokenizers_pair
    assert isinstance(tok, Tokenizer)
    assert (tok.bos_id, tok.eot_id, tok.pad_id) == (
        reference.bos_token_id,
        reference.eos_token_id,
        reference.pad_token_id,
    )
    assert tok.vocab_size == len(reference) == 2 * 256 + len(MERGES) + 2
    assert tok.image_id == -1  # no "<image>" in this vocabulary


def test_ids_match_transformers(tokenizers_pair):
    reference, tok = tokenizers_pair
    expected = np.array(
        reference(TEXTS, max_length=MAX_LEN, truncation=True, padding="max_length")["input_ids"]
    )
    got, truncated = tok.tokenize(TEXTS, MAX_LEN, return_truncated=True)
    np.testing.assert_array_equal(got, expected)
    assert truncated.tolist() == [len(tok.encode(t)) > MAX_LEN - 2 for t in TEXTS]
    assert truncated[4] and not truncated[0] and not truncated[5]
    assert got[4, -1] == tok.eot_id and got[0, 0] == tok.bos_id
    # the merges were used ("the</w>" is one token) and lowercasing happened before them
    assert reference.convert_tokens_to_ids("the</w>") in got[1]
    # unpadded, untruncated: the plain encodings agree too
    for text in TEXTS:
        assert [tok.bos_id, *tok.encode(text), tok.eot_id] == reference(text)["input_ids"]


def test_decode_drops_specials(tokenizers_pair):
    reference, tok = tokenizers_pair
    row = tok.tokenize(["The cat, abc!"], MAX_LEN)[0]
    assert tok.decode(row) == reference.decode(row, skip_special_tokens=True) == "the cat , abc !"


def test_missing_file_and_unknown_special(tmp_path, tokenizers_pair):
    with pytest.raises(hf.InteropError, match="has no tokenizer.json"):
        hf.load_tokenizer(str(tmp_path))
    reference, _ = tokenizers_pair
    reference.save_pretrained(str(tmp_path))
    with pytest.raises(hf.InteropError, match=r"no bos token found \(got '<s>'\); pass bos_token=\.\.\.$"):
        hf.load_tokenizer(str(tmp_path), bos_token="<s>")
    with pytest.raises(hf.InteropError, match=r"image token '<image>' is not in the vocabulary$"):
        hf.load_tokenizer(str(tmp_path), image_token="<image>")


def test_tokenize_like_hf_uses_the_files_template(tokenizers_pair):
    reference, tok = tokenizers_pair
    expected = reference(TEXTS, max_length=MAX_LEN, truncation=True, padding="max_length")["input_ids"]
    np.testing.assert_array_equal(tok.tokenize_like_hf(TEXTS, MAX_LEN), expected)
