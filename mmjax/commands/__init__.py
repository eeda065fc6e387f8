"""The command-line entry points, thin: parse flags, call the library.

``python -m mmjax.commands.zero_shot`` (also ``python -m mmjax.zero_shot``): zero-shot classification
with a Hugging Face CLIP or SigLIP directory. ``python -m mmjax.commands.generate`` (also
``python -m mmjax.generate``): answers of a Hugging Face LLaVA directory. Training is
``python -m mmjax.train``.
"""

from mmjax import models
from mmjax.interop import hf, hub, preprocess


def load_hf_model(model_dir: str, kind: str, purpose: str):
    """``(cfg, params, model, tokenizer, preprocessor)`` of a Hugging Face directory whose model type is
    ``kind`` ("two_tower", "early_fusion"); another type is an ``InteropError`` ending in ``purpose``."""
    model_dir = hub.resolve(model_dir)  # a Hub id: its local snapshot, once for all the files below
    cfg, params = hf.load(model_dir)
    if cfg.get("type") != kind:
        raise hf.InteropError(f"{model_dir!r} is a {cfg.get('type')} model; {purpose}")
    model = models.build(cfg)
    return cfg, params, model, hf.load_tokenizer(model_dir), preprocess.processor_config(model_dir)
