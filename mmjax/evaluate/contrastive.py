"""Final evaluation of a two-tower model: zero-shot classification and image<->text retrieval on the
evaluation split, plus the report (``report.md`` with a loss curve and a similarity matrix)."""

from __future__ import annotations

import jax
import numpy as np

from mmjax.evaluate import report, retrieval, zero_shot


def to_host(x) -> np.ndarray:
    """The whole value of ``x`` as numpy, also when it spans devices of several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def batched(fn, array: np.ndarray, batch_size: int):
    """Apply a jitted ``fn`` over ``array`` in fixed-size batches (the last one padded: one compile); ``fn``
    may return an array or a tuple of arrays (then a tuple of the concatenations)."""
    out = []
    for i in range(0, len(array), batch_size):
        chunk = array[i : i + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(jax.tree.map(lambda x: to_host(x)[: batch_size - pad], fn(chunk)))
    if isinstance(out[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*out))
    return np.concatenate(out)


def zero_shot_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Top-1/top-5 over every class and among the split's own classes; with "colour shape" class names
    (two words) also how often each word of the prediction is right (``colour`` and ``shape`` for the
    shapes dataset), which tells "cannot see the attribute" from "cannot compose it"."""
    acc = zero_shot.topk_accuracy(logits, labels)
    present = np.unique(labels)  # zero-shot among only the classes of the split (e.g. held-out ones)
    restricted = zero_shot.topk_accuracy(logits[:, present], np.searchsorted(present, labels))
    out = {"top1": acc["top1"], "top5": acc["top5"], "top1_split_classes_only": restricted["top1"]}
    words = [name.split() for name in class_names]
    if len(labels) and all(len(w) == 2 for w in words):
        pred = logits.argmax(axis=1)
        for i, attr in enumerate(("colour", "shape")):
            out[f"{attr}_accuracy"] = float(
                np.mean([words[p][i] == words[y][i] for p, y in zip(pred, labels)])
            )
    return out


def evaluate(task, params, workdir: str, history: list[dict], run_info: dict) -> dict:
    from mmjax.data import images, pipeline  # lazy: the data stack, only where a run evaluates

    cfg = task.config
    data = pipeline.load_split(
        cfg.data, cfg.eval.split, tokenizer=task.tokenizer, max_examples=cfg.eval.num_examples
    )
    bs = cfg.eval.batch_size
    apply = lambda method: jax.jit(  # noqa: E731
        lambda x: task.model.apply({"params": params}, x, method=method)[0]
    )
    encode_image, encode_text = apply("encode_image"), apply("encode_text")
    # zero-shot prompts name one object: scored against the object head's embedding, where the model has one
    encode_object = apply("encode_image_object") if task.model.object_head else encode_image
    if task.model.object_head:  # both image embeddings from one pass of the tower
        image_emb, object_emb = batched(apply("encode_image_both"), data["image"], bs)
    else:
        image_emb = object_emb = batched(encode_image, data["image"], bs)
    text_emb = batched(encode_text, data["text"], bs)

    results = {"eval_split": cfg.eval.split, "eval_examples": int(len(data["caption"]))}
    class_names, logits = list(data["class_names"]), None
    if class_names:  # zero-shot where the dataset names classes (not a plain image-caption dataset)
        logits, zs_results = _zero_shot(task, cfg, encode_text, encode_object, object_emb, data, class_names)
        results.update(zs_results)
    results.update(retrieval.retrieval_metrics(image_emb, text_emb, keys=data["caption"]))
    results.update(run_info)
    if jax.process_index() == 0:
        n = min(8, len(data["caption"]))
        normalization = cfg.data.get("normalization", "minus_one_one")
        report.write(
            workdir,
            results,
            history,
            images=images.normalize(images.denormalize(data["image"][:n], normalization)),  # in [-1, 1]
            captions=data["caption"][:n],
            similarity=image_emb[:n] @ text_emb[:n].T,
            predictions=[class_names[i] for i in logits[:n].argmax(axis=1)]
            if logits is not None
            else [""] * n,
        )
    return results


def _zero_shot(
    task, cfg, encode_text, encode_object, object_emb, data, class_names
) -> tuple[np.ndarray, dict]:
    """Zero-shot logits of the evaluation split (``object_emb``: its images' embeddings) and its metrics,
    and those of ``eval.also_split``."""
    from mmjax.data import pipeline  # lazy: as in evaluate

    bs = cfg.eval.batch_size
    class_emb = zero_shot.class_embeddings(
        lambda t: batched(encode_text, t, bs),
        lambda texts: task.tokenizer.tokenize(texts, cfg.data.max_len),
        class_names,
        pipeline.prompt_templates(cfg.data),
    )
    logits = object_emb @ class_emb.T
    labels = np.asarray(data["label"])
    zs = zero_shot_metrics(logits, labels, class_names)
    results = {
        "zero_shot_top1": zs.pop("top1"),
        "zero_shot_top5": zs.pop("top5"),
        "zero_shot_classes": len(class_names),
        "zero_shot_top1_split_classes_only": zs.pop("top1_split_classes_only"),
        **{f"zero_shot_{k}": v for k, v in zs.items()},
    }
    # The same zero-shot on a second split (default: validation, whose pairs were all seen in training, when
    # the evaluation split is test): "learned the attributes" beside "composes them into unseen pairs".
    also = cfg.eval.get("also_split")  # a named split that does not exist is load_split's one-line error
    if also is None and cfg.eval.split == "test" and "validation" in pipeline.get_dataset(cfg.data).splits:
        also = "validation"
    if also:
        other = pipeline.load_split(
            cfg.data, also, tokenizer=task.tokenizer, max_examples=cfg.eval.num_examples
        )
        other_logits = batched(encode_object, other["image"], bs) @ class_emb.T
        for k, v in zero_shot_metrics(other_logits, np.asarray(other["label"]), class_names).items():
            results[f"{also}_zero_shot_{k}"] = v
    return logits, results
