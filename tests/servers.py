"""What a test does when the server it needs cannot be had.

It skips, unless its `require_variable` is 1 (what `nox -s integration`
and `.ci/run` set): a run meant to cover that server must never pass
without it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str, *, require_variable: str, server: str) -> NoReturn:
    """Skip the test for `reason`, or fail it when `require_variable` is 1."""
    if os.environ.get(require_variable) == "1":
        pytest.fail(f"{reason}, and {require_variable}=1: the {server} tests did not run")
    pytest.skip(reason)
