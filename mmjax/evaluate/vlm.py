"""Final evaluation of a fusion model: VQA (exact match, overall and per question type) and captioning
(BLEU-4 against the reference captions, and the fraction of captions that name exactly the scene's
colour-shape pairs), by greedy generation with the KV cache; plus ``report.md`` with a grid of test
images, questions, answers and generated captions."""

from __future__ import annotations

import os

import numpy as np

from mmjax.evaluate import captioning, report, vqa
from mmjax.evaluate.contrastive import to_host


def generate_all(task, params, images: np.ndarray, image_of: np.ndarray, prompts: list[np.ndarray],
                 max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers to ``prompts[i]`` about ``images[image_of[i]]``, decoded to text; one compiled
    program (every batch is left-padded to the longest prompt, the last one filled up by repetition).
    Images are gathered per batch, so several prompts about one image never copy the whole split."""
    import jax

    from mmjax import generate

    tok = task.tokenizer
    fn = generate.make_generate(task.model, max_new_tokens=max_new_tokens, eos_id=tok.eot_id, pad_id=tok.pad_id,
                                banned_ids=sorted(tok.special_ids - {tok.eot_id}) +  # and ids the tokenizer lacks
                                list(range(tok.vocab_size, task.model.lm.vocab_size)))
    width = max(len(p) for p in prompts)
    out = []
    for start in range(0, len(prompts), batch_size):
        idx = np.arange(start, min(start + batch_size, len(prompts)))
        idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])
        padded = generate.left_pad([prompts[i] for i in idx], tok.pad_id, width)
        tokens = to_host(fn(params, images[image_of[idx]], padded, jax.random.key(0)))
        out.extend(tok.decode(row) for row in tokens[:min(batch_size, len(prompts) - start)])
    return out


def evaluate(task, params, workdir: str, history: list[dict], run_info: dict) -> dict:
    import jax

    from mmjax.data import pipeline

    cfg, tok, n = task.config, task.tokenizer, task.num_image_tokens
    data = pipeline.load_split(cfg.data, cfg.eval.split, tokenizer=tok, max_examples=cfg.eval.num_examples)
    encode = lambda prompt: pipeline.encode_vlm(tok, n, prompt, None, cfg.data.max_len)[0]  # noqa: E731
    bs = cfg.eval.batch_size

    rows = [(i, q, a, t) for i, qs in enumerate(data["questions"])
            for q, a, t in zip(qs, data["answers"][i], data["question_types"][i])]
    predicted = generate_all(task, params, data["image"], np.array([r[0] for r in rows]),
                             [encode(r[1]) for r in rows], cfg.eval.answer_tokens, bs)
    results = {"eval_split": cfg.eval.split, "eval_examples": len(data["caption"]),
               **vqa.vqa_metrics(predicted, [r[2] for r in rows], [r[3] for r in rows])}

    prompt = encode(cfg.data.caption_prompt)
    captions = generate_all(task, params, data["image"], np.arange(len(data["caption"])),
                            [prompt] * len(data["caption"]), cfg.data.max_len - len(prompt), bs)
    objects = [captioning.mentioned_objects(c[0]) for c in data["captions"]]  # the canonical caption names all
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
        panels[i].append(f"caption: {captions[i]}")
    report.loss_curve(os.path.join(workdir, "loss.png"), history)
    report.vlm_grid(os.path.join(workdir, "examples.png"), data["image"][:n], panels,
                    "Test images: questions, generated answers (✓ correct, ✗ (expected)) and captions")
    path = os.path.join(workdir, "report.md")
    with open(path, "w") as f:
        f.write(f"# mmjax run report\n\n{report.metrics_table(results)}\n\n## Training loss\n"
                f"![loss curve](loss.png)\n\n## Test examples (greedy decoding)\n![examples](examples.png)\n")
    return path
