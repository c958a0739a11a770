"""The README's Python examples run as written, and its Layout section matches the tree."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from resilience.config import markdown_table
from resilience.events import close_logging
from simulations.emulators import plan_from_json

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGES = ("resilience", "providers", "state", "simulations", "tests")
NEWCOMERS_PATH = (
    "the breaker",
    "the job machine",
    "the worker",
    "the HTTP server",
    "the CLI command `serve`",
)
"""What a newcomer looks for first; the Layout section must name one file for each."""


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


# -- the Layout section cannot drift from the tree ------------------------------------


def layout() -> str:
    text = README.read_text()
    assert "\n## Layout\n" in text, "the README has no Layout section"
    return text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def drawn_tree() -> dict[str, list[str]]:
    """The Layout section's drawing: {folder: the modules it names there}.

    A line starting with `name/` opens a folder, nested under the folder above
    it with less indentation; the names after it, and on the lines below that
    do not open a folder, are its modules.
    """
    match = re.search(r"```text\n(.*?)```", layout(), re.S)
    assert match, "the Layout section draws no tree"
    folders: dict[str, list[str]] = {}
    open_folders: list[tuple[int, str]] = []
    for line in match.group(1).splitlines():
        first, *rest = line.split() or [""]
        if first.endswith("/"):
            indent = len(line) - len(line.lstrip())
            while open_folders and open_folders[-1][0] >= indent:
                open_folders.pop()
            folder = (open_folders[-1][1] if open_folders else "") + first
            open_folders.append((indent, folder))
            folders[folder] = rest
        elif first:
            assert open_folders, f"modules drawn before any folder: {line!r}"
            folders[open_folders[-1][1]] += [first, *rest]
    return folders


def test_every_folder_and_module_the_layout_draws_exists() -> None:
    missing = [
        f"{folder}{name}"
        for folder, names in drawn_tree().items()
        for name in ["", *names]
        if not (ROOT / folder / f"{name}.py").is_file() and not (ROOT / folder / name).is_dir()
    ]
    assert not missing, f"the README's Layout draws what the tree does not hold: {missing}"


def test_the_layout_draws_every_folder_of_code() -> None:
    folders = {
        f"{path.parent.relative_to(ROOT).as_posix()}/"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }
    assert folders == set(drawn_tree())


def test_every_path_the_layout_names_exists() -> None:
    paths = [
        token
        for token in re.findall(r"`([^`\s]+)`", layout())
        if "/" in token or token.endswith(".py")
    ]
    assert len(paths) > len(NEWCOMERS_PATH)
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"the README's Layout names paths that do not exist: {missing}"


def test_the_layout_names_one_file_for_each_thing_a_newcomer_looks_for() -> None:
    rows = dict(re.findall(r"^\| (.+?) \| `([^`]+)` \|$", layout(), re.M))
    for thing in NEWCOMERS_PATH:
        assert thing in rows, f"the Layout section does not say where {thing} is"
        assert (ROOT / rows[thing]).is_file(), rows[thing]


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
