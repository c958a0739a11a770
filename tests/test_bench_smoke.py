"""The overhead benchmark's harness runs every subject; timings are never asserted."""

from __future__ import annotations

import math

from simulations.bench.overhead import SUBJECTS, measure, render


def test_measure_reports_every_subject() -> None:
    results = measure(calls=200, repeats=1)
    assert set(results) == set(SUBJECTS)
    for name, us_per_call in results.items():
        assert math.isfinite(us_per_call), name
        assert us_per_call > 0, name
    table = render(results, calls=200, repeats=1)
    assert all(label in table for label in SUBJECTS.values())
