"""Import and export of other frameworks' weights, and their preprocessing.

``mmjax.interop.hf``: Hugging Face ``transformers`` models (CLIP, SigLIP, LLaVA) and ``tokenizers`` files.
``mmjax.interop.preprocess``: images prepared as a Hugging Face image processor does (Pillow + numpy).
Nothing here imports torch, transformers, safetensors or tokenizers until a function needs it, so
``mmjax`` works without them (``pip install -e ".[hf]"`` for loading and saving directories,
``".[parity]"`` to convert live ``transformers`` models and run the parity tests).
"""
