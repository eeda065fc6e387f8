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


def test_the_training_tokenizer_of_a_file_is_its_own_template(tokenizers_pair, tmp_path):
    """``get_tokenizer("hf:PATH")`` (``data.tokenizer`` of an imported model) lays rows out as the file's
    template does, with the truncated flags the pipeline counts: CLIP's template is mmjax's own layout;
    SigLIP's ("ids </s>", no BOS) is not, and the file's wins."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, processors

    from mmjax.data import tokenizer as tok_lib

    reference, tok = tokenizers_pair
    reference.save_pretrained(str(tmp_path / "clip"))
    file_tok = tok_lib.get_tokenizer(f"hf:{tmp_path / 'clip'}")
    expected = reference(TEXTS, max_length=MAX_LEN, truncation=True, padding="max_length")["input_ids"]
    ids, cut = file_tok.tokenize(TEXTS, MAX_LEN, return_truncated=True)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(ids, tok.tokenize(TEXTS, MAX_LEN))  # CLIP: the same layout as mmjax's
    assert cut.tolist() == [len(f) > MAX_LEN for f in reference(TEXTS)["input_ids"]] and cut.any()
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        file_tok.tokenize("a text", MAX_LEN)
    # a SigLIP-like template: no BOS, "</s>" closes the row and (no tokenizer_config.json: PAD = EOS) fills it
    words = ["<pad>", "</s>", "a", "red", "star"]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<pad>", "</s>"])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    (tmp_path / "siglip").mkdir()
    backend.save(str(tmp_path / "siglip" / "tokenizer.json"))
    siglip = tok_lib.get_tokenizer(f"hf:{tmp_path / 'siglip'}/tokenizer.json")
    assert siglip.tokenize(["a red star"], 6).tolist() == [[2, 3, 4, 1, 1, 1]]
