"""A Hugging Face ``tokenizer.json`` behind mmjax's ``Tokenizer`` interface, so that the pipeline and the
command lines use it like the built-in tokenizers.

    tok = load_tokenizer("path/to/dir")           # tokenizer.json (+ tokenizer_config.json beside it)
    tok.encode("a red square"), tok.tokenize(texts, max_len), tok.tokenize_like_hf(texts, max_len)

Reading the file needs the ``tokenizers`` package (``pip install -e ".[hf]"``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from mmjax.data.tokenizer import Tokenizer
from mmjax.interop import InteropError, hub


class HfTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` behind mmjax's ``Tokenizer`` interface: ``encode`` gives the ids of the
    text alone, ``tokenize`` lays rows out as ``[BOS] ids... [EOS] PAD...`` and truncates keeping the EOS
    (what ``transformers`` gives with ``truncation=True, padding="max_length"`` for CLIP). Specials that
    the vocabulary lacks (e.g. mmjax's ``[SEP]``) are -1: never produced, never matched."""

    def __init__(
        self, tokenizer, *, bos_id: int, eot_id: int, pad_id: int, image_id: int = -1, sep_id: int = -1
    ):
        self.backend = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eot_id, self.pad_id = bos_id, eot_id, pad_id
        self.image_id, self.sep_id = image_id, sep_id

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def _padded(self, max_len: int):
        """A copy of the backend that truncates and pads to ``max_len`` (made once per length)."""
        cache = self.__dict__.setdefault("_padded_backends", {})
        if max_len not in cache:
            backend = self.backend.__class__.from_str(self.backend.to_str())
            backend.enable_truncation(max_len)
            backend.enable_padding(length=max_len, pad_id=self.pad_id)
            cache[max_len] = backend
        return cache[max_len]

    def tokenize_like_hf(self, texts, max_len: int, *, return_truncated: bool = False):
        """int32 ``[len(texts), max_len]`` with the file's own template (e.g. SigLIP's ``words </s>``, no
        BOS), truncated and padded to ``max_len`` by ``tokenizers`` itself: what transformers gives with
        ``truncation=True, padding="max_length"``; ``return_truncated``: also which rows were cut."""
        encodings = self._padded(max_len).encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], np.int32)
        if not return_truncated:
            return ids
        return ids, np.array([bool(e.overflowing) for e in encodings], bool)  # what truncation cut off

    def decode(self, ids) -> str:
        specials = self.special_ids
        text = self.backend.decode([i for i in map(int, ids) if i not in specials], skip_special_tokens=True)
        suffix = getattr(self.backend.model, "end_of_word_suffix", None)  # CLIP's "</w>" marks word ends
        return text.replace(suffix, " ").strip() if suffix else text


class HfFileTokenizer(HfTokenizer):
    """An ``HfTokenizer`` whose ``tokenize`` is ``tokenize_like_hf``: rows laid out by the file's own
    template, as the model was trained (CLIP: ``[BOS] ids [EOS] PAD``, the same as ``HfTokenizer``'s;
    SigLIP: ``ids </s> PAD``, no BOS). What ``data.tokenizer="hf:PATH"`` trains and evaluates with."""

    def tokenize(self, texts, max_len: int, *, return_truncated: bool = False):
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of strings; wrap a single text in a list")
        return self.tokenize_like_hf(texts, max_len, return_truncated=return_truncated)


def _token_name(value):
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(
    path: str,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    image_token: str | None = None,
    file_layout: bool = False,
) -> HfTokenizer:
    """An :class:`HfTokenizer` from ``tokenizer.json`` (a file, or a directory holding it). The special
    tokens come from the arguments, else ``tokenizer_config.json`` beside it, else the file's
    post-processor (BOS = its first special, EOS = its last); PAD defaults to EOS (as CLIP's), the image
    token to ``"<image>"`` when the vocabulary has one (LLaVA). ``file_layout``: an ``HfFileTokenizer``
    (``tokenize`` with the file's own template)."""
    from tokenizers import Tokenizer as Backend  # lazy: the optional [hf] extra

    path = hub.resolve(path)  # a Hub id: its snapshot in the cache
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise InteropError(f"{path!r} has no tokenizer.json; pass the file or its directory")
    backend = Backend.from_file(file)
    # a saved file may carry the truncation and padding of its last use: ids of the whole text, unpadded
    backend.no_truncation()
    backend.no_padding()
    names: dict[str, Any] = {}
    config_path = os.path.join(os.path.dirname(file), "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
        names = {k: _token_name(config.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
    with open(file) as f:
        post = json.load(f).get("post_processor") or {}
    if post.get("type") in ("RobertaProcessing", "BertProcessing"):
        names["bos"] = names.get("bos") or post["cls"][0]
        names["eos"] = names.get("eos") or post["sep"][0]
    elif post.get("type") == "TemplateProcessing" and post.get("special_tokens"):
        specials = list(post["special_tokens"])
        names["bos"] = names.get("bos") or specials[0]
        names["eos"] = names.get("eos") or specials[-1]
    given = (("bos", bos_token), ("eos", eos_token), ("pad", pad_token))
    names.update({k: v for k, v in given if v is not None})
    names["pad"] = names.get("pad") or names.get("eos")

    def token_id(kind: str) -> int:
        name = names.get(kind)
        i = backend.token_to_id(name) if name is not None else None
        if i is None:
            raise InteropError(f"{file}: no {kind} token found (got {name!r}); pass {kind}_token=...")
        return i

    image = backend.token_to_id(image_token or "<image>")
    if image_token is not None and image is None:
        raise InteropError(f"{file}: image token {image_token!r} is not in the vocabulary")
    return (HfFileTokenizer if file_layout else HfTokenizer)(
        backend,
        bos_id=token_id("bos"),
        eot_id=token_id("eos"),
        pad_id=token_id("pad"),
        image_id=-1 if image is None else image,
    )
