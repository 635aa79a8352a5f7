"""Spec of what the CLI takes from files and gives to the terminal: manifest files within limits (binary,
huge, deeply nested, alias bombs refused quickly with one line), stored values printed with their control
characters escaped."""

from __future__ import annotations

import time

import pytest

from ballast.cli.common import SafeConsole
from ballast.cli.manifest_file import MAX_BYTES, ManifestFileError, read_documents
from ballast.cli.output import escape_controls, render

BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB


@pytest.mark.parametrize("data, says", [
    (BOMB.encode(), "alias bomb"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"a:\n" + b"".join(b"  " * k + b"k:\n" for k in range(1, 80)) + b"  " * 80 + b"x: 1\n", "nested too deeply"),
    (b"a: &a [*a]\n", "recursive alias"),
    (b"\x7fELF\x02\x01\x01\x00\x00", "binary file"),
    (b"kind: \xff\xfe", "not UTF-8"),
    (b"a" * (MAX_BYTES + 1), "larger than"),
    (b"a: [1, 2\n", "not valid YAML"),
    (b"---\n---\n", "holds no documents"),
])
def test_hostile_or_broken_files_are_refused_quickly_with_one_line(data: bytes, says: str) -> None:
    started = time.process_time()
    with pytest.raises(ManifestFileError) as refused:
        read_documents(data, "m.yaml")
    assert says in str(refused.value) and str(refused.value).startswith("m.yaml ")
    assert time.process_time() - started < 5, "refused without expanding anything"


def test_ordinary_manifests_with_anchors_and_merges_still_load() -> None:
    text = b"""
x-defaults: &defaults {zone: zone-a}
---
kind: Cell
metadata: {name: cell-a}
spec: {<<: {zone: zone-a}}
---
kind: Cell
metadata: {name: cell-b}
spec: &s {zone: zone-b}
"""
    docs = read_documents(text, "m.yaml")
    assert [d.get("kind") for d in docs] == [None, "Cell", "Cell"] and docs[1]["spec"] == {"zone": "zone-a"}


@pytest.mark.parametrize("stored, shown", [
    ("plain name", "plain name"),
    ("/v1/\x1b]0;pwned\x07", "/v1/\\x1b]0;pwned\\x07"),
    ("red\x1b[31m", "red\\x1b[31m"),
    ("back\x08\x08\rover", "back\\x08\\x08\\x0dover"),
    ("rtl\u202eabc", "rtl\\u202eabc"),
    ("two\nlines\tkept", "two\nlines\tkept"),
    ("grüße 世界", "grüße 世界"),
])
def test_control_characters_are_escaped(stored: str, shown: str) -> None:
    assert escape_controls(stored) == shown


def test_tables_and_printed_text_reach_the_terminal_without_control_characters() -> None:
    console = SafeConsole(highlight=False, soft_wrap=True, width=200, record=True, force_terminal=False)
    name = "x\x1b[2J[red]m[/red]\u202e"
    render("tokens", [{"id": "tok_1", "user": "u", "name": name, "expiresAt": None, "revokedAt": None}], "table",
           console)
    console.print(f"audit: POST {name}", markup=False)
    text = console.export_text()
    assert "\x1b" not in text and "\u202e" not in text
    assert "x\\x1b[2J[red]m[/red]\\u202e" in text, "shown as escapes, markup shown as text"
