"""The parity tests' import guard (``helpers.require``): without the parity extra they are skipped, except in
CI (``CI=true``), where a missing module fails the run instead of hiding every parity test."""

import json

import pytest
from helpers import in_ci, require


@pytest.mark.parametrize(
    "value,expected",
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        (None, False),
        ("", False),
        ("false", False),
        ("0", False),
    ],
)
def test_in_ci(value, expected):
    assert in_ci(value) is expected


def test_a_missing_module_is_a_skip_outside_ci_and_a_failure_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="mmjax_no_such_module"):
        require("mmjax_no_such_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: 'mmjax_no_such_module' does not import"):
        require("mmjax_no_such_module")
    assert require("json") is json  # a module that imports is returned, in CI or not
