"""Final evaluation of a fusion model: VQA (exact match, overall and per question type) and captioning
(BLEU-4 against the reference captions, and the fraction of captions that name exactly the scene's
colour-shape pairs), by greedy generation with the KV cache; plus ``report.md`` with a grid of test
images, questions, answers and generated captions."""

from __future__ import annotations

import functools
import os

import numpy as np

from mmjax.evaluate import captioning, report, vqa
from mmjax.evaluate.contrastive import to_host


@functools.lru_cache(maxsize=8)
def _greedy(model, max_new_tokens: int, eos_id: int, pad_id: int, banned_ids: tuple[int, ...]):
    """One jitted generator per model and settings, so evaluating many checkpoints compiles once."""
    from mmjax import generate

    return generate.make_generate(
        model, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, banned_ids=banned_ids
    )


def generate_all(
    task,
    params,
    images: np.ndarray,
    image_of: np.ndarray,
    prompts: list[np.ndarray],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers to ``prompts[i]`` about ``images[image_of[i]]``, decoded to text; one compiled
    program (every batch is left-padded to the longest prompt, the last one filled up by repetition).
    Images are gathered per batch, so several prompts about one image never copy the whole split."""
    import jax

    from mmjax import generate

    tok = task.tokenizer
    fn = _greedy(
        task.model,
        max_new_tokens,
        tok.eot_id,
        tok.pad_id,  # bans the specials and unknown ids
        tuple(sorted(tok.special_ids - {tok.eot_id}))
        + tuple(range(tok.vocab_size, task.model.lm.vocab_size)),
    )
    width = max(len(p) for p in prompts)
    out = []
    for start in range(0, len(prompts), batch_size):
        idx = np.arange(start, min(start + batch_size, len(prompts)))
        idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
        padded = generate.left_pad([prompts[i] for i in idx], tok.pad_id, width)
        tokens = to_host(fn(params, images[image_of[idx]], padded, jax.random.key(0)))
        out.extend(tok.decode(row) for row in tokens[: min(batch_size, len(prompts) - start)])
    return out


def encoder(task):
    """``prompt -> ids`` of a generation prompt for ``task``'s model and data config."""
    from mmjax.data import layout  # lazy: as the other data imports (layout itself needs only numpy)

    n, max_len = task.num_image_tokens, task.config.data.max_len
    return lambda prompt: layout.encode_vlm(task.tokenizer, n, prompt, None, max_len)[0]


def answer_questions(task, params, data: dict, batch_size: int) -> tuple[list[tuple], list[str], dict]:
    """Greedy answers to every question of ``data`` (``pipeline.load_split``): ``(rows, predicted,
    metrics)``, ``rows`` being ``(image index, question, answer, type)`` and ``metrics`` the VQA exact
    match overall and per type."""
    rows = [
        (i, q, a, t)
        for i, qs in enumerate(data["questions"])
        for q, a, t in zip(qs, data["answers"][i], data["question_types"][i])
    ]
    encode = encoder(task)
    predicted = generate_all(
        task,
        params,
        data["image"],
        np.array([r[0] for r in rows]),
        [encode(r[1]) for r in rows],
        task.config.eval.answer_tokens,
        batch_size,
    )
    return rows, predicted, vqa.vqa_metrics(predicted, [r[2] for r in rows], [r[3] for r in rows])


def evaluate(task, params, workdir: str, history: list[dict], run_info: dict) -> dict:
    import jax

    from mmjax.data import loaders  # lazy: the data stack, only where a task reads data

    cfg = task.config
    load = loaders.load_pairs if task.images_per_example == 2 else loaders.load_split
    data = load(cfg.data, cfg.eval.split, tokenizer=task.tokenizer, max_examples=cfg.eval.num_examples)
    bs = cfg.eval.batch_size
    rows, predicted, metrics = answer_questions(task, params, data, bs)
    results = {"eval_split": cfg.eval.split, "eval_examples": len(data["caption"]), **metrics}
    if task.images_per_example == 2:  # the same questions with the two images swapped: a model that
        # answers about the image the question names drops here; one that ignores "first"/"second" does not
        _, _, swapped = answer_questions(task, params, dict(data, image=data["image"][:, ::-1]), bs)
        results["vqa_accuracy_images_swapped"] = swapped["vqa_accuracy"]

    encode, n = encoder(task), len(data["caption"])
    prompts = [encode(p) for p in data.get("caption_prompt", [cfg.data.caption_prompt] * n)]
    captions = generate_all(
        task, params, data["image"], np.arange(n), prompts, cfg.data.max_len - max(map(len, prompts)), bs
    )
    objects = [
        captioning.mentioned_objects(c[0]) for c in data["captions"]
    ]  # the canonical caption names all
    results.update(captioning.caption_metrics(captions, data["captions"], objects), **run_info)

    if jax.process_index() == 0:
        write_report(workdir, results, history, data, rows, predicted, captions)
    return results


def write_report(workdir, results, history, data, rows, predicted, captions, n: int = 8) -> str:
    n = min(n, len(captions))
    panels = [[] for _ in range(n)]
    for (i, q, a, _), p in zip(rows, predicted):
        if i < n and len(panels[i]) < 4:  # up to 4 questions per image
            panels[i] += [f"Q: {q}", f"A: {p} " + ("✓" if vqa.normalize_answer(p) == a else f"✗ ({a})")]
    for i in range(n):
        panels[i].append(f"{data['caption_prompt'][i]}: " if "caption_prompt" in data else "caption: ")
        panels[i][-1] += captions[i]
    images = data["image"][:n]
    if images.ndim == 5:  # several images per example: side by side, a white gap between
        gap = np.ones((*images.shape[:1], images.shape[2], 4, 3), images.dtype)
        images = np.concatenate([x for t in range(images.shape[1]) for x in (images[:, t], gap)][:-1], axis=2)
    report.loss_curve(os.path.join(workdir, "loss.png"), history)
    report.vlm_grid(
        os.path.join(workdir, "examples.png"),
        images,
        panels,
        "Test images: questions, generated answers (✓ correct, ✗ (expected)) and captions",
    )
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(
            f"# mmjax run report\n\n{report.metrics_table(results)}\n\n## Training loss\n"
            f"![loss curve](loss.png)\n\n## Test examples (greedy decoding)\n![examples](examples.png)\n"
        )
    return path
