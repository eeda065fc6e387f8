"""Shared by the data tests: one tiny shapes dataset (built once per session) and the word tokenizer."""

import pytest

from mmjax.data import shapes_builder
from mmjax.data.tokenizer import WordTokenizer

SIZES = dict(num_train=64, num_validation=16, num_test=16)  # the modules' configs must use these


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    shapes_builder.ensure_built(path, **SIZES)
    return path


@pytest.fixture(scope="session")
def tok():
    return WordTokenizer.for_shapes()
