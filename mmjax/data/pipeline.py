"""Grain input pipelines over TFDS array_record sources (no TensorFlow): the data stack's one namespace.

Four modules, re-exported here: ``mmjax.data.registry`` (which ``Dataset`` ``data.name`` reads: its
random-access source of a split, class names, zero-shot prompts and text grammar; free of Grain and TFDS),
``mmjax.data.transforms`` (per-example transforms of a record), ``mmjax.data.images`` (crops, a model's
normalisation) and ``mmjax.data.loaders`` (the training pipeline and whole splits for evaluation).
``from mmjax.data import pipeline`` gives them all.

Training (``train_loader``) is a Grain dataset pipeline over ``builder.as_data_source("train")``, built
lazily on a ``MapDataset`` so that every process describes the same *global* sequence of examples but reads
only its own: ``MapDataset.source`` -> ``shuffle(seed)`` -> ``repeat(num_epochs)`` (infinite by default; a
new order each epoch) -> ``random_map`` (per example: decode the PNG, pick a caption -- 'random': one of the
K per example and epoch, 'canonical': caption 0; with probability ``short_caption_prob`` the dataset's
caption naming the main object alone -- and flip left-right with ``flip_prob`` together with the dataset's
``flip_text`` on the caption, then tokenize) -> ``batch`` into blocks of the local batch ``global_batch_size
// shard_count`` rows (drop remainder) -> process ``p`` of ``n`` keeps blocks ``p, p + n, p + 2n, ...``
(``ds[p::n]``; every process the same number) -> [``mp_prefetch`` workers] -> normalise. So global batch
``t`` is blocks ``t*n .. t*n + n - 1``: the processes' local batches, concatenated in process order, are
exactly the one-process batch -- the same rows in the same order, whatever the number of processes -- and a
process only reads and decodes its own rows. The random_map rng is seeded from (seed, global element index),
so augmentation does not depend on the process count either, the same seed gives the same batches, and
``worker_count`` does not change them.

Batches are dicts of numpy arrays (B = local batch, L = ``max_len``):
  ``image`` float32 [B, H, W, 3] normalised by ``data.normalization`` (default "minus_one_one": x / 127.5 - 1,
  in [-1, 1]; "clip": OpenAI CLIP's mean and std; ``images.normalize``, ``denormalize`` inverts) in the
  workers, after ``data.crop`` ("none": as stored; "random_resized", "center": any image size),
  ``text`` int32 [B, L] (``[BOS] ... [EOT] PAD``, see ``mmjax.data.tokenizer``), ``label`` int32 [B],
  ``id`` int32 [B] (index of the example in its split), ``truncated`` bool [B] (caption cut to fit L),
  with ``hard_negatives`` ``text_neg`` int32 [B, L]: the caption with one shape word swapped, and with
  ``extra_short_caption`` ``text_short`` int32 [B, L]: also the caption naming the main object alone.

Vision-language models (LLaVA-style) use the same loader with another per-example transform,
``train_loader(..., preprocess=vlm_preprocess(data_cfg, tokenizer, num_image_tokens))``: each example is a
caption (probability ``caption_prob``; prompt ``caption_prompt``) or one of the record's questions, flipped
like the image, and ``encode_vlm`` lays it out as ``[BOS] [IMG]*n prompt [SEP] answer [EOT] PAD...``; with
``vqa_turns > 1`` further questions about the same image follow as ``question [SEP] answer [EOT]`` turns
(as many as fit), so one image's forward pass teaches several answers; ``vqa_questions="all"`` draws
them from the dataset's further questions too (shapes: every object's colour, shape and pairwise
relation, ``shapes.object_questions``), not only the record's own.
Its batches: ``image`` as above, ``tokens`` int32 [B, L], ``kind`` int32 [B] (0 caption, 1 VQA), ``id``
int32 [B], ``truncated`` bool [B] (answer cut to fit L).

Checkpointing: ``it = iter(train_loader(...))`` is a ``grain.DatasetIterator``; ``it.get_state()`` (a
JSON-able dict) and ``it.set_state(state)`` on a fresh iterator of an identically configured pipeline
(same worker_count too: the state's layout depends on it) resume exactly. With Orbax (0.12) save it
as one item of a composite checkpoint, ``ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it),
...)``, and restore in place with ``grain.checkpoint.CheckpointRestore(it)``; the handler registered for
these args is ``grain.checkpoint.CheckpointHandler`` (with several processes each saves its own
iterator's state). Iterators with workers should be ``close()``d.

``worker_count > 0`` prepares batches in that many Grain processes, each keeping ``worker_buffer_size``
(default 2) batches ready. Grain's workers need parsed absl flags; we mark them parsed when they are not
(e.g. under pytest). Workers are started with "spawn", so scripts need an ``if __name__ == "__main__":``
guard (absl's ``app.run`` style is fine).
"""

from mmjax.data.images import NORMALIZATIONS, denormalize, normalize, random_resized_crop, resize_center_crop
from mmjax.data.layout import encode_vlm, images_per_example
from mmjax.data.loaders import load_pairs, load_split, train_loader
from mmjax.data.registry import (
    DATASETS,
    GENERIC_PROMPT_TEMPLATES,
    Dataset,
    attribute_words,
    class_names,
    data_source,
    get_dataset,
    prompt_templates,
    register_dataset,
)
from mmjax.data.transforms import (
    ImageView,
    PairSource,
    TrainPreprocess,
    VlmPreprocess,
    decode_image,
    pair_partners,
    record_image,
    texts,
    train_preprocess,
    vlm_preprocess,
)

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "ImageView",
    "GENERIC_PROMPT_TEMPLATES",
    "Dataset",
    "PairSource",
    "TrainPreprocess",
    "VlmPreprocess",
    "attribute_words",
    "class_names",
    "data_source",
    "decode_image",
    "denormalize",
    "encode_vlm",
    "get_dataset",
    "images_per_example",
    "load_pairs",
    "load_split",
    "normalize",
    "pair_partners",
    "prompt_templates",
    "random_resized_crop",
    "record_image",
    "register_dataset",
    "resize_center_crop",
    "texts",
    "train_loader",
    "train_preprocess",
    "vlm_preprocess",
]
