"""Data: the dataset ``registry``, the embedded shapes dataset (``shapes``, ``shapes_builder``), the
``tokenizer``, the per-example ``transforms`` and the Grain ``loaders`` (all re-exported by ``pipeline``).

Import the submodules directly (``from mmjax.data import pipeline``); this package imports nothing, so
``import mmjax.data`` stays cheap and pulls in neither TFDS nor Grain (nor does ``registry``).
"""
