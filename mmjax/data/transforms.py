"""Per-example transforms: a record of a split -> the arrays of one training example.

``TrainPreprocess`` (CLIP/SigLIP: image, one caption, optionally the short caption and a hard negative) and
``VlmPreprocess`` (the fusion models: a captioning or VQA example laid out by ``encode_vlm``) are Grain
``RandomMap``s: the loaders (``mmjax.data.loaders``) apply them per example with an rng seeded from
(seed, global element index). They know no dataset by name: the dataset's grammar (``Dataset.flip_text``,
``negative_caption``, ``about_image``, from ``mmjax.data.registry``) is handed to them as functions, and
``train_preprocess`` / ``vlm_preprocess`` build them from a config. Also here: decoding a record's image and
texts with one clear error per damaged record, the crop of a training view (``ImageView``, over
``mmjax.data.images``) and the two-image ``PairSource``.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable

import grain
import numpy as np
from PIL import Image, UnidentifiedImageError

from mmjax.config import ConfigError, DataError
from mmjax.data import images, registry
from mmjax.data.layout import encode_vlm, images_per_example
from mmjax.data.tokenizer import Tokenizer

IMAGE_KEYS = (
    "image_png",
    "image",
)  # the record field holding the encoded image: shapes', a prepared dataset's


@dataclasses.dataclass(frozen=True)
class ImageView:
    """How a training example sees its decoded image: ``crop`` "none" (as stored: the dataset's images are
    already ``data.image_size`` square, as shapes'), "center" (shortest side to ``size``, centre crop) or
    "random_resized" (``images.random_resized_crop`` with ``scale``; the only one that draws from the rng)."""

    crop: str = "none"
    size: int = 64
    scale: tuple[float, float] = (0.9, 1.0)

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"data.crop={self.crop!r} is unknown; valid crops: {', '.join(CROPS)}")

    @classmethod
    def from_config(cls, data_cfg) -> ImageView:
        return cls(
            data_cfg.get("crop", "none"),
            data_cfg.get("image_size", 64),
            tuple(data_cfg.get("crop_scale", (0.9, 1.0))),
        )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.crop == "random_resized":
            return images.random_resized_crop(image, self.size, rng, self.scale)
        if self.crop == "center":
            return images.resize_center_crop(image, self.size)
        if image.shape[:2] != (self.size, self.size):
            raise DataError(
                f"an image of {image.shape[1]}x{image.shape[0]} pixels, but data.image_size={self.size} and "
                "data.crop='none'; set data.crop='random_resized' (or 'center') for images of any size"
            )
        return image


CROPS = ("none", "center", "random_resized")


def pair_partners(n: int) -> np.ndarray:
    """``partners[i]``: the example that example ``i`` of an ``n``-example split is paired with, never
    ``i`` itself; fixed (a function of ``n`` only) and spread over the whole split."""
    if n < 2:
        raise ValueError(f"two-image examples need a split of at least 2 examples, got {n}")
    return (np.arange(n) + np.random.default_rng(2).integers(1, n, size=n)) % n


class PairSource:
    """The two-image variant of a data source: element ``i`` is ``(record i, record partners[i])``."""

    def __init__(self, source):
        self.source, self.partners = source, pair_partners(len(source))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        return self.source[i], self.source[int(self.partners[i])]


def _unchanged(text: str) -> str:
    return text


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_image(png: bytes, where: str = "a record") -> np.ndarray:
    """PNG (or any Pillow format) bytes -> uint8 [H, W, 3]; bytes that do not decode are a ``DataError``
    naming the record (``where``, e.g. "train record 12")."""
    try:
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated data), ...
        why = (
            "not an image Pillow can read"
            if isinstance(e, UnidentifiedImageError)
            else f"{type(e).__name__}: {e}"
        )
        raise DataError(
            f"{where}: its image bytes do not decode ({why}); the dataset is damaged: regenerate it "
            "(delete its directory under data.data_dir) or drop the record"
        ) from None


def record_image(record, split: str = "train") -> np.ndarray:
    """``decode_image`` of a record's encoded image (``image_png`` or ``image``), naming the record if it
    does not decode."""
    key = next((k for k in IMAGE_KEYS if k in record), None)
    if key is None:
        raise DataError(
            f"{split} record {record.get('id')} has no image field ({' or '.join(IMAGE_KEYS)}); "
            f"its fields: {', '.join(sorted(record))}"
        )
    return decode_image(record[key], f"{split} record {record.get('id')}")


def texts(record, key: str, split: str = "train") -> list[str]:
    """``record[key]`` as a list of str; an empty or blank text is a ``DataError`` naming the record (it
    would train on ``[BOS] [EOT]`` alone, or on an empty answer)."""
    values = [_text(v) for v in record[key]]
    for i, value in enumerate(values):
        if not value.strip():
            raise DataError(
                f"{split} record {record.get('id')}: {key}[{i}] is empty; repair the dataset or "
                "drop the record"
            )
    return values


class TrainPreprocess(grain.transforms.RandomMap):
    """Record -> {image uint8, text, label, id, truncated}: caption sampling and a consistent flip.

    ``flip_text`` mirrors a text with the image (None: texts stay as they are); ``negative_caption(text,
    rng)`` makes ``text_neg`` (needed by ``hard_negatives``): the dataset's grammar (``registry.Dataset``)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_len: int,
        flip_prob: float,
        caption_sampling: str,
        hard_negatives: bool = False,
        short_caption_prob: float = 0.0,
        short_caption: int | None = None,
        extra_short_caption: bool = False,
        *,
        flip_text: Callable[[str], str] | None = None,
        negative_caption: Callable[[str, np.random.Generator], str] | None = None,
        view: ImageView | None = None,
    ):
        if caption_sampling not in ("random", "canonical"):
            raise ValueError(f"caption_sampling must be 'random' or 'canonical', got {caption_sampling!r}")
        if not 0 <= short_caption_prob <= 1:
            raise ValueError(f"data.short_caption_prob={short_caption_prob} is not a probability in [0, 1]")
        if (short_caption_prob or extra_short_caption) and short_caption is None:
            raise ValueError(
                "data.short_caption_prob > 0 or data.extra_short_caption, but the dataset names no "
                "short caption (Dataset.short_caption); set them to 0 and False"
            )
        if hard_negatives and negative_caption is None:
            raise ValueError(
                "data.hard_negatives=True, but the dataset makes no negative captions "
                "(Dataset.negative_caption); set data.hard_negatives=False"
            )
        self.tokenizer, self.max_len = tokenizer, max_len
        self.flip_prob, self.caption_sampling = flip_prob, caption_sampling
        self.hard_negatives = hard_negatives
        self.short_caption_prob, self.short_caption = short_caption_prob, short_caption
        self.extra_short_caption = extra_short_caption
        self.flip_text, self.negative_caption = flip_text or _unchanged, negative_caption
        self.view = view  # None: images as stored

    def random_map(self, record, rng: np.random.Generator):
        image = record_image(record)
        if self.view is not None:  # "none" checks the stored size; only "random_resized" draws
            image = self.view(image, rng)
        captions = texts(record, "captions")
        caption = captions[rng.integers(len(captions))] if self.caption_sampling == "random" else captions[0]
        if self.short_caption_prob and rng.random() < self.short_caption_prob:  # no draw at 0
            caption = captions[self.short_caption]
        short = captions[self.short_caption] if self.extra_short_caption else None
        if rng.random() < self.flip_prob:
            image, caption = np.ascontiguousarray(image[:, ::-1]), self.flip_text(caption)
            short = None if short is None else self.flip_text(short)
        text, truncated = self.tokenizer.tokenize([caption], self.max_len, return_truncated=True)
        out = {
            "image": image,
            "text": text[0],
            "label": np.int32(record["label"]),
            "id": np.int32(record["id"]),
            "truncated": truncated[0],
        }
        if short is not None:
            out["text_short"] = self.tokenizer.tokenize([short], self.max_len)[0]
        if self.hard_negatives:
            out["text_neg"] = self.tokenizer.tokenize([self.negative_caption(caption, rng)], self.max_len)[0]
        return out


class VlmPreprocess(grain.transforms.RandomMap):
    """Record -> {image uint8, tokens, kind (0 caption, 1 VQA), id, truncated}: a captioning example with
    probability ``caption_prob`` (prompt ``caption_prompt``; caption 0 or, with 'random', any caption),
    else one of the record's questions and its answer; flipped left-right with ``flip_prob``, text too.

    A pair of records (``PairSource``) gives ``image [2, H, W, 3]``: the example is about one of the two
    images, named in the text (``about_image``, the dataset's: "in the second image what colour is ..."),
    and the later turns of a conversation ask about either image. ``num_image_tokens`` counts the
    placeholders of all of a row's images. ``flip_text`` mirrors the texts with the image (None: they stay
    as they are)."""

    CAPTION, VQA = 0, 1

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_image_tokens: int,
        max_len: int,
        flip_prob: float,
        caption_prompt: str,
        caption_prob: float,
        caption_sampling: str,
        vqa_turns: int = 1,
        images: int = 1,
        *,
        flip_text: Callable[[str], str] | None = None,
        about_image: Callable[[str, int], str] | None = None,
        view: ImageView | None = None,
        more_questions: Callable | None = None,
        shortcut: Callable | None = None,
    ):
        if caption_sampling not in ("random", "canonical"):
            raise ValueError(f"caption_sampling must be 'random' or 'canonical', got {caption_sampling!r}")
        if images > 1 and about_image is None:
            raise ValueError(
                f"data.images_per_example={images}, but the dataset cannot name one of several images "
                "(Dataset.about_image); use one image per example"
            )
        if caption_prob > 0:  # fail here, not in a Grain worker
            prompt = about_image(caption_prompt, images - 1) if images > 1 else caption_prompt
            encode_vlm(tokenizer, num_image_tokens, prompt, "", max_len)
        self.tokenizer, self.num_image_tokens, self.max_len = tokenizer, num_image_tokens, max_len
        self.flip_prob, self.caption_prompt = flip_prob, caption_prompt
        self.caption_prob, self.caption_sampling = caption_prob, caption_sampling
        self.vqa_turns = vqa_turns
        self.flip_text, self.about_image = flip_text or _unchanged, about_image
        self.view = view  # None: images as stored
        self.more_questions = more_questions  # None: the records' own questions only
        self.shortcut = shortcut  # None: every question is asked

    def random_map(self, record, rng: np.random.Generator):
        kind_u, pick_u, flip_u = rng.random(3)  # always the same draws, in the same order
        records = record if isinstance(record, tuple) else (record,)
        which = int(rng.random() * len(records)) if len(records) > 1 else 0  # the image asked about
        about = self.about_image if len(records) > 1 else (lambda text, k: text)
        asked, turns = records[which], []
        if kind_u < self.caption_prob:
            kind, prompt = self.CAPTION, about(self.caption_prompt, which)
            captions = texts(asked, "captions")
            answer = (
                captions[int(pick_u * len(captions))] if self.caption_sampling == "random" else captions[0]
            )
        else:
            questions, answers = (
                [texts(r, "questions") for r in records],
                [texts(r, "answers") for r in records],
            )
            if self.more_questions is not None:  # data.vqa_questions="all"; repeats of its own dropped
                for k, r in enumerate(records):
                    for q, a in zip(*self.more_questions(r, rng)):
                        if q not in questions[k]:
                            questions[k].append(q), answers[k].append(a)
            if self.shortcut is not None:  # data.vqa_questions="balanced"
                for k, r in enumerate(records):
                    kept = [j for j, q in enumerate(questions[k]) if not self.shortcut(r, q)]
                    if kept:  # a record whose every question is a shortcut keeps them (shapes: never)
                        questions[k], answers[k] = (
                            [questions[k][j] for j in kept],
                            [answers[k][j] for j in kept],
                        )
            kind, i = self.VQA, int(pick_u * len(questions[which]))
            prompt, answer = about(questions[which][i], which), answers[which][i]
            # more questions (about any of the images), in random order, as later turns
            if self.vqa_turns > 1:
                pool = [(k, j) for k, q in enumerate(questions) for j in range(len(q))]
                others = [pool[p] for p in rng.permutation(len(pool)) if pool[p] != (which, i)][
                    : self.vqa_turns - 1
                ]
                turns = [(about(questions[k][j], k), answers[k][j]) for k, j in others]
        views = [record_image(r) for r in records]
        if self.view is not None:
            views = [self.view(v, rng) for v in views]
        image = np.stack(views) if len(views) > 1 else views[0]
        if flip_u < self.flip_prob:  # a mirrored question about a mirrored scene keeps its answer
            image = np.ascontiguousarray(np.flip(image, axis=-2))
            prompt, answer = self.flip_text(prompt), self.flip_text(answer)
            turns = [(self.flip_text(q), self.flip_text(a)) for q, a in turns]
        tokens, truncated = encode_vlm(
            self.tokenizer, self.num_image_tokens, prompt, answer, self.max_len, turns
        )
        return {
            "image": image,
            "tokens": tokens,
            "kind": np.int32(kind),
            "id": np.int32(asked["id"]),
            "truncated": np.bool_(truncated),
        }


def train_preprocess(data_cfg, tokenizer: Tokenizer) -> TrainPreprocess:
    """``TrainPreprocess`` from ``data_cfg`` (max_len, flip_prob, caption_sampling, hard_negatives,
    short_caption_prob, extra_short_caption) and the grammar of its dataset (``data.name``)."""
    ds = registry.get_dataset(data_cfg)
    return TrainPreprocess(
        tokenizer,
        data_cfg.get("max_len", 32),
        data_cfg.get("flip_prob", 0.5),
        data_cfg.get("caption_sampling", "random"),
        data_cfg.get("hard_negatives", False),
        data_cfg.get("short_caption_prob", 0.0),
        ds.short_caption,
        data_cfg.get("extra_short_caption", False),
        flip_text=ds.flip_text,
        negative_caption=ds.negative_caption,
        view=ImageView.from_config(data_cfg),
    )


def vlm_preprocess(data_cfg, tokenizer: Tokenizer, num_image_tokens: int) -> VlmPreprocess:
    """``VlmPreprocess`` from ``data_cfg`` (max_len, flip_prob, caption_prompt, caption_prob,
    caption_sampling, vqa_turns, vqa_questions, images_per_example) and the grammar of its dataset
    (``data.name``); pass it to ``train_loader(preprocess=...)``. ``vqa_questions``: "stored" (each
    record's own questions), "all" (and the dataset's ``more_questions``: for shapes, every object's
    colour, shape and pairwise relation) or "balanced" (all, less those that teach a shortcut of the
    training split's co-occurrences, ``Dataset.shortcut``: for shapes, ``shapes.pair_shortcut``);
    ``vqa_side_questions``: with "all" or "balanced", also every object's absolute position."""
    ds = registry.get_dataset(data_cfg)
    which = data_cfg.get("vqa_questions", "stored")
    if which not in ("stored", "all", "balanced"):
        raise ConfigError(f"data.vqa_questions must be 'stored', 'all' or 'balanced', got {which!r}")
    if which != "stored" and (ds.more_questions is None or (which == "balanced" and ds.shortcut is None)):
        raise ConfigError(
            f"data.vqa_questions={which!r}, but dataset {data_cfg.name!r} has no "
            f"{'more questions than its records' if ds.more_questions is None else 'shortcut test'} "
            "(Dataset.more_questions, Dataset.shortcut); use 'stored'"
        )
    sides = bool(data_cfg.get("vqa_side_questions", False))
    if sides and which == "stored":
        raise ConfigError(
            "data.vqa_side_questions=True adds to the dataset's more questions, which "
            "data.vqa_questions='stored' leaves out; use 'all' or 'balanced'"
        )
    more = functools.partial(ds.more_questions, sides=True) if sides else ds.more_questions
    return VlmPreprocess(
        tokenizer,
        num_image_tokens,
        data_cfg.get("max_len", 32),
        data_cfg.get("flip_prob", 0.5),
        data_cfg.get("caption_prompt", "what is in the image"),
        data_cfg.get("caption_prob", 0.3),
        data_cfg.get("caption_sampling", "canonical"),
        data_cfg.get("vqa_turns", 1),
        images_per_example(data_cfg),
        flip_text=ds.flip_text,
        about_image=ds.about_image,
        view=ImageView.from_config(data_cfg),
        more_questions=more if which != "stored" else None,
        shortcut=ds.shortcut if which == "balanced" else None,
    )
