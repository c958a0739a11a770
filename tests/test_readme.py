"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from resilience.config import markdown_table
from resilience.events import close_logging
from simulations.emulators import plan_from_json

README = Path(__file__).resolve().parent.parent / "README.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_examples() -> None:
    assert len(examples()) >= 2


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BREAKWATER_LOG", str(tmp_path / "readme.jsonl"))
    code = examples()[index]
    try:
        exec(compile(code, f"README example {index}", "exec"), {"__name__": "readme"})
    finally:
        close_logging()
    if "configure_logging()" in code:
        assert (tmp_path / "readme.jsonl").exists()


def test_the_readme_fault_plan_is_a_valid_plan() -> None:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), re.S)
    plans = [orjson.loads(block) for block in blocks if '"openai"' in block]
    assert plans, "the README shows no fault plan"
    for document in plans:
        plan = plan_from_json(document)
        assert plan.openai.rpm == document["openai"]["rpm"]


def test_the_readme_settings_table_is_the_declared_one() -> None:
    """The Configuration section shows exactly the rows `resilience.config` declares."""
    text = README.read_text()
    shown = re.search(
        r"<!-- settings table:.*?-->\n(.*?)<!-- end of settings table -->", text, re.S
    )
    assert shown is not None, "the README lost its settings table markers"
    assert shown.group(1) == markdown_table(), (
        "the README's settings table is stale: paste `python -m resilience.config` over it"
    )
