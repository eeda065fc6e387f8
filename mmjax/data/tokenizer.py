"""Tokenizers: one interface, a word-level vocabulary for the shapes grammar and a UTF-8 byte fallback.

Conventions shared by every tokenizer (``mmjax.interop.hf_tokenizer``'s BPE ones,
``get_tokenizer("hf:PATH")``, implement the same ``Tokenizer``):

* ``PAD = 0``, then ``BOS = 1`` and ``EOT = 2`` (``UNK = 3`` for the word tokenizer); real tokens follow.
* Two more specials for vision-language models come *after* every other id (so adding them changed no
  existing id): ``image_id`` ("[IMG]", the placeholder of one image token) and ``sep_id`` ("[SEP]", end of
  the prompt / start of the answer). Word tokenizer: right after the sorted words; byte tokenizer: 259
  and 260. Words added to the word vocabulary later (``shapes.LATE_WORDS``: "first", "second" of the
  two-image questions) come after those, in the order they were added, so again no id changes.
* ``encode(text)`` returns the ids of the text only (no specials, never IMG or SEP); ``decode(ids)``
  drops every special (PAD, BOS, EOT, IMG, SEP).
* ``tokenize(texts, max_len)`` returns int32 ``[N, max_len]`` rows ``[BOS] tokens... [EOT] PAD...``.
  Text too long for ``max_len`` is truncated so that the EOT is always present (in the last position);
  ``return_truncated=True`` also returns a bool ``[N]`` saying which rows were cut.
* The text tower pools at the EOT position: the index of the first ``eot_id`` in the row, i.e.
  ``argmax(tokens == eot_id, axis=-1)``; attention masks are ``tokens != pad_id``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence

import numpy as np

from mmjax.data import shapes

PAD_ID, BOS_ID, EOT_ID, UNK_ID = 0, 1, 2, 3


class Tokenizer(abc.ABC):
    """Subclasses set ``vocab_size``, ``pad_id``, ``bos_id``, ``eot_id``, ``image_id``, ``sep_id`` and
    define encode/decode."""

    vocab_size: int
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eot_id: int = EOT_ID
    image_id: int
    sep_id: int

    @property
    def special_ids(self) -> frozenset[int]:
        """The ids ``decode`` drops."""
        return frozenset((self.pad_id, self.bos_id, self.eot_id, self.image_id, self.sep_id))

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, without special tokens."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens and padding are dropped."""

    def tokenize(self, texts: Sequence[str], max_len: int, *, return_truncated: bool = False):
        """int32 ``[len(texts), max_len]`` of ``[BOS] tokens... [EOT] PAD...`` (see module docstring)."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of strings; wrap a single text in a list")
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (BOS and EOT), got {max_len}")
        out = np.full((len(texts), max_len), self.pad_id, np.int32)
        truncated = np.zeros(len(texts), bool)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > max_len - 2:
                ids, truncated[row] = ids[: max_len - 2], True
            out[row, 0] = self.bos_id
            out[row, 1 : len(ids) + 1] = ids
            out[row, len(ids) + 1] = self.eot_id
        return (out, truncated) if return_truncated else out


class WordTokenizer(Tokenizer):
    """Whitespace word tokenizer over a fixed vocabulary; lowercases and strips ``? , . ! ; :``."""

    unk_id: int = UNK_ID
    SPECIALS = ("[PAD]", "[BOS]", "[EOT]", "[UNK]")
    VLM_SPECIALS = ("[IMG]", "[SEP]")  # appended after the words: no earlier id depends on them
    _PUNCTUATION = re.compile(r"[?,.!;:]")

    def __init__(self, words: Sequence[str], late_words: Sequence[str] = ()):
        """``words`` get sorted ids after the specials; ``late_words`` (in order) come after ``[IMG]`` and
        ``[SEP]``: words added to a vocabulary after models were trained on it."""
        late_words = list(dict.fromkeys(late_words))
        words = sorted(set(words) - set(self.SPECIALS) - set(self.VLM_SPECIALS) - set(late_words))
        self.itos = list(self.SPECIALS) + words + list(self.VLM_SPECIALS) + late_words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.image_id, self.sep_id = len(self.SPECIALS) + len(words), len(self.SPECIALS) + len(words) + 1

    @classmethod
    def for_shapes(cls) -> WordTokenizer:
        """The vocabulary of the shapes grammar (captions, questions, answers, prompt templates)."""
        return cls(shapes.vocabulary(), shapes.LATE_WORDS)

    @classmethod
    def normalize(cls, text: str) -> str:
        """The text as this tokenizer sees it: lowercase, punctuation stripped, single spaces."""
        return " ".join(cls._PUNCTUATION.sub(" ", text.lower()).split())

    def encode(self, text: str) -> list[int]:
        # normalize lowercases, so the text "[IMG]" is the unknown word "[img]", never the special id.
        return [self.stoi.get(w, self.unk_id) for w in self.normalize(text).split()]

    def decode(self, ids: Sequence[int]) -> str:
        specials = self.special_ids
        return " ".join(self.itos[i] for i in map(int, ids) if i not in specials)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted past the specials: id = byte + 3; handles any text. IMG = 259, SEP = 260."""

    OFFSET = 3
    image_id, sep_id = 256 + OFFSET, 257 + OFFSET

    def __init__(self):
        self.vocab_size = 258 + self.OFFSET

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i - self.OFFSET for i in map(int, ids) if self.OFFSET <= i < 256 + self.OFFSET)
        return data.decode("utf-8", errors="replace")


_TOKENIZERS = {"shapes_words": WordTokenizer.for_shapes, "bytes": ByteTokenizer}


HF_PREFIX = "hf:"  # data.tokenizer="hf:PATH": a Hugging Face tokenizer.json (a file, or its directory)


def get_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name: "shapes_words", "bytes", or ``"hf:PATH"`` (a ``tokenizer.json`` file or a model
    directory holding one, e.g. CLIP's or SigLIP's: ``mmjax.interop.hf_tokenizer``, the [hf] extra)."""
    if name.startswith(HF_PREFIX):
        from mmjax.interop import hf_tokenizer  # lazy: the optional [hf] extra, only for this tokenizer

        # rows laid out by the file's own template, as the model was trained (SigLIP's has no BOS)
        return hf_tokenizer.load_tokenizer(name[len(HF_PREFIX) :], file_layout=True)
    if name not in _TOKENIZERS:
        raise ValueError(
            f"unknown tokenizer {name!r}; valid names: {', '.join(sorted(_TOKENIZERS))}, "
            f"or {HF_PREFIX}PATH of a tokenizer.json"
        )
    return _TOKENIZERS[name]()
