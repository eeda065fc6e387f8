"""Data: the embedded shapes dataset (``shapes``, ``shapes_builder``), ``tokenizer`` and Grain ``pipeline``.

Import the submodules directly (``from mmjax.data import pipeline``); this package imports nothing, so
``import mmjax.data`` stays cheap and pulls in neither TFDS nor Grain.
"""
