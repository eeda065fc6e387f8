"""How a vision-language example is laid out as one row of token ids, and how many images it has.

Shared by the input pipeline (``mmjax.data.pipeline``, which re-exports both) and the tasks
(``mmjax.tasks``) — and free of Grain, Pillow and TFDS, so that building a model's train step (the
benchmarks on a bare GPU/TPU machine) needs only jax, flax, optax and ml_collections.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmjax.data.tokenizer import Tokenizer


def images_per_example(data_cfg) -> int:
    """``data.images_per_example``: 1, or 2 for the two-image variant (``PairSource``)."""
    n = data_cfg.get("images_per_example", 1)
    if n not in (1, 2):
        raise ValueError(f"data.images_per_example must be 1 or 2, got {n!r}")
    return n


def encode_vlm(
    tokenizer: Tokenizer,
    num_image_tokens: int,
    prompt: str,
    answer: str | None,
    max_len: int,
    more_turns: Sequence[tuple[str, str]] = (),
) -> tuple[np.ndarray, bool]:
    """(ids, truncated) of a VLM example: with an answer, int32 [max_len] ``[BOS] [IMG]*num_image_tokens
    prompt [SEP] answer [EOT] PAD...`` (answer ids cut to fit, the EOT always last, truncated=True);
    with ``answer=None``, the generation prompt ``[BOS] [IMG]*n prompt [SEP]``, unpadded.
    ``more_turns``: further (question, answer) turns ``question [SEP] answer [EOT]`` appended after the
    first, as many whole turns as fit (a multi-turn conversation about the image, as in LLaVA)."""
    prompt_ids = tokenizer.encode(prompt)
    ids = [tokenizer.bos_id, *[tokenizer.image_id] * num_image_tokens, *prompt_ids, tokenizer.sep_id]
    need = len(ids) + (answer is not None)  # + EOT
    if need > max_len:
        raise ValueError(
            f"VLM prompt does not fit in max_len={max_len}: {num_image_tokens} image tokens + "
            f"{len(prompt_ids)} prompt tokens + {need - num_image_tokens - len(prompt_ids)} "
            f"specials = {need}; raise data.max_len"
        )
    if answer is None:
        return np.array(ids, np.int32), False
    answer_ids = tokenizer.encode(answer)
    room = max_len - need
    out = np.full(max_len, tokenizer.pad_id, np.int32)
    ids += answer_ids[:room] + [tokenizer.eot_id]
    for question, reply in more_turns:
        turn = [*tokenizer.encode(question), tokenizer.sep_id, *tokenizer.encode(reply), tokenizer.eot_id]
        if len(ids) + len(turn) > max_len:
            break
        ids += turn
    out[: len(ids)] = ids
    return out, len(answer_ids) > room
