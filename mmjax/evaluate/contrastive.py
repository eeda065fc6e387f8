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


def batched(fn, array: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply a jitted ``fn`` over ``array`` in fixed-size batches (the last one padded: one compile)."""
    out = []
    for i in range(0, len(array), batch_size):
        chunk = array[i:i + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(to_host(fn(chunk))[:batch_size - pad])
    return np.concatenate(out)


def evaluate(task, params, workdir: str, history: list[dict], run_info: dict) -> dict:
    from mmjax.data import pipeline

    cfg = task.config
    data = pipeline.load_split(cfg.data, cfg.eval.split, tokenizer=task.tokenizer,
                               max_examples=cfg.eval.num_examples)
    bs = cfg.eval.batch_size
    apply = lambda method: jax.jit(  # noqa: E731
        lambda x: task.model.apply({"params": params}, x, method=method)[0])
    encode_image, encode_text = apply("encode_image"), apply("encode_text")
    image_emb = batched(encode_image, data["image"], bs)
    text_emb = batched(encode_text, data["text"], bs)

    class_names = list(data["class_names"])
    class_emb = zero_shot.class_embeddings(
        lambda t: batched(encode_text, t, bs),
        lambda texts: task.tokenizer.tokenize(texts, cfg.data.max_len),
        class_names, pipeline.prompt_templates(cfg.data))
    logits = image_emb @ class_emb.T
    labels = np.asarray(data["label"])
    acc = zero_shot.topk_accuracy(logits, labels)
    present = np.unique(labels)  # zero-shot among only the classes of the split (e.g. held-out ones)
    restricted = zero_shot.topk_accuracy(logits[:, present], np.searchsorted(present, labels))
    results = {
        "eval_split": cfg.eval.split,
        "eval_examples": int(len(labels)),
        "zero_shot_top1": acc["top1"],
        "zero_shot_top5": acc["top5"],
        "zero_shot_classes": len(class_names),
        "zero_shot_top1_split_classes_only": restricted["top1"],
        **retrieval.retrieval_metrics(image_emb, text_emb, keys=data["caption"]),
        **run_info,
    }
    if jax.process_index() == 0:
        n = min(8, len(labels))
        report.write(workdir, results, history, images=data["image"][:n], captions=data["caption"][:n],
                     similarity=image_emb[:n] @ text_emb[:n].T,
                     predictions=[class_names[i] for i in logits[:n].argmax(axis=1)])
    return results
