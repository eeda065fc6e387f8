"""Import and export of other frameworks' weights, and their preprocessing.

``mmjax.interop.hf`` is the entry point for Hugging Face: ``load``, ``save``, ``load_tokenizer`` and
``InteropError``. Its parts, one job each:

``hf``            transformers configs + state dicts <-> mmjax configs + params; directories (safetensors)
``hf_layouts``    how one array is laid out in each framework (``Rule`` and its kinds; fused q/k/v)
``hf_rules``      the parameter-name maps: which transformers key is which mmjax path, per architecture
``hf_configs``    the config converters per architecture (CLIP, SigLIP, LLaVA), both ways
``hf_tokenizer``  a ``tokenizer.json`` behind mmjax's ``Tokenizer`` interface
``preprocess``    images prepared as a Hugging Face image processor does (Pillow + numpy)

Nothing here imports torch, transformers, safetensors or tokenizers until a function needs it, so
``mmjax`` works without them (``pip install -e ".[hf]"`` for loading and saving directories,
``".[parity]"`` to convert live ``transformers`` models and run the parity tests).
"""

from mmjax.config import ConfigError


class InteropError(ConfigError):
    """A model or directory that cannot be converted (unsupported architecture or option, missing or
    unexpected weights, shape mismatch); printed as one line."""
