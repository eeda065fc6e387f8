"""The command-line entry points, thin: parse flags, call the library.

``python -m mmjax.commands.zero_shot`` (also ``python -m mmjax.zero_shot``): zero-shot classification
with a Hugging Face CLIP or SigLIP directory. ``python -m mmjax.commands.generate`` (also
``python -m mmjax.generate``): answers of a Hugging Face LLaVA directory. Training is
``python -m mmjax.train``.
"""
