"""Answers of a Hugging Face LLaVA directory to a prompt about each image (no torch needed).

    python -m mmjax.generate --model DIR --prompt "USER: <image> what is this? ASSISTANT:" IMAGE...

DIR holds ``config.json``, ``model.safetensors``, ``tokenizer.json`` and ``preprocessor_config.json``.
Greedy (or sampled, ``--temperature``) decoding with ``mmjax.generate``; one JSON line per image:
``{"image", "prompt", "text", "tokens"}``. ``<image>`` in the prompt marks where the image tokens go
(default: right after BOS).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from mmjax import generate
from mmjax.commands import load_hf_model
from mmjax.config import ConfigError
from mmjax.interop import preprocess


def answer(
    model_dir: str,
    prompt: str,
    images: list[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
):
    """Yields one ``{"image", "prompt", "text", "tokens"}`` per image of ``images``."""
    cfg, params, model, tok, pre = load_hf_model(model_dir, "early_fusion", "generation needs LLaVA")
    image_tokens = [cfg.image_id] * model.num_image_tokens(cfg.image_size)
    parts = prompt.split("<image>") if "<image>" in prompt else ["", prompt]
    ids = [tok.bos_id] + tok.encode(parts[0])
    for part in parts[1:]:
        ids += image_tokens + tok.encode(part)
    eos = cfg.hf.get("eos_token_id")
    eos = tok.eot_id if eos is None else (eos[0] if isinstance(eos, (list, tuple)) else eos)
    pad = cfg.pad_id if cfg.pad_id >= 0 else tok.pad_id
    fn = generate.make_generate(
        model, max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad, temperature=temperature
    )
    for path in images:
        pixels = preprocess.load_image(path, pre, cfg.image_size)[None]
        out = fn(params, pixels, np.asarray([ids], np.int32), jax.random.key(seed))
        out = np.asarray(out)[0].tolist()
        if eos in out:
            out = out[: out.index(eos) + 1]
        yield {"image": path, "prompt": prompt, "text": tok.decode(out), "tokens": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmjax.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a LLaVA directory (see mmjax.interop.hf)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        for row in answer(
            args.model,
            args.prompt,
            args.images,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
        ):
            print(json.dumps(row), flush=True)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
