"""Every ``trilemma`` command written in the documentation names a command and options that exist.

The README's commands are run by tests/test_readme.py; the longer commands of docs/*.md and
bench/README.md (hour-long trainings, experiments) cannot be, so they are checked against the
real argument parser instead: the command path (``train ddgan``, ``experiment steps``, ``show
attention`` …) must exist and every ``--option`` written after it must be one of that command's
options, spelled out in full. Values are not checked: the documents use placeholders (``--seed S``,
``--minutes M``, ``…``). This is what drifts when an option is renamed or removed.

Commands are read from fenced code blocks other than Python (lines joined at a trailing backslash, ``#`` comments
dropped) and from inline code spans; failures are listed as ``file:line: what``, all at once.
"""

from __future__ import annotations

import argparse
import re
from functools import lru_cache
from pathlib import Path

from helpers import subcommands

from trilemma.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "bench/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|[\s/(])trilemma\s+([a-z][a-z-]*(?:\s.*)?)$")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


@lru_cache(maxsize=1)
def _root() -> argparse.ArgumentParser:
    return build_parser()


def _commands(path: str) -> list[tuple[int, str]]:
    """(line, text after "trilemma ") of every command in one document."""
    text = (ROOT / path).read_text()
    found = []
    for block in re.finditer(r"```([^\n]*)\n(.*?)```", text, flags=re.S):
        if block.group(1).strip() in ("python", "py", "pycon"):
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        lines = block.group(2).split("\n")
        i = 0
        while i < len(lines):
            start, line = first + i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            line = re.sub(r"(^|\s)#\s.*$", "", line)
            for part in re.split(r"\s(?:&&|\||;)\s|;$", line):
                m = COMMAND.search(part.strip())
                if m:
                    found.append((start, m.group(1)))
            i += 1
    outside = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for span in re.finditer(r"`([^`]+)`", outside):
        m = COMMAND.search(span.group(1).replace("\n", " "))
        if m and not re.match(r"\s*(from|import)\s", span.group(1)):
            found.append((outside.count("\n", 0, span.start()) + 1, m.group(1)))
    return found


def _problems(command: str) -> list[str]:
    """What in ``command`` (the words after "trilemma") the parser does not know."""
    words = re.sub(r"\[([^\]]*)\]", r" \1 ", command).split()    # optional parts: their options count too
    parser, path = _root(), ["trilemma"]
    while words and subcommands(parser):
        choices = subcommands(parser)
        word = words[0]
        if word in choices:
            parser, path = choices[word], path + [word]
            words = words[1:]
            continue
        alternatives = word.split("|")                          # "train ddpm|vae|gan": each must exist
        if len(alternatives) > 1 and all(a in choices for a in alternatives):
            parser, path = choices[alternatives[0]], path + [alternatives[0]]
            words = words[1:]
            continue
        if word.startswith("-") or word in ("…", "...") or word.isupper() or word.startswith("<"):
            return []                                           # "trilemma train … --out RUN": no command named
        return [f"'{' '.join(path)} {word}': no such command (known: {', '.join(sorted(choices))})"]
    known = _options(parser)
    problems = []
    for word in words:
        word = word.strip("\"'(),.")
        if not word.startswith("--") or word == "--":
            continue
        name = word.split("=")[0]
        if name not in known:
            problems.append(f"'{' '.join(path)}' has no option {name}")
    return problems


def test_the_checker_sees_what_drifts():
    assert _problems("train ddpm --data digits --out runs/x --minutes M --seed S") == []
    assert _problems("train ddpm|ldm|t2i --out RUN") == []
    assert _problems("eval RUN --n 2000 [--repeats 3] --json …") == []
    assert _problems("train ddpm --epochs 3") == ["'trilemma train ddpm' has no option --epochs"]
    assert _problems("train ddpm --min 3") == ["'trilemma train ddpm' has no option --min"]   # no prefixes
    assert _problems("experiment nosuch --out x")[0].startswith("'trilemma experiment nosuch': no such command")
    assert _problems("show attention RUN \"a prompt\" [--layer all] --out a.png") == []
    lines = dict(_commands("docs/ddgan.md"))
    assert any(c.startswith("train ddgan") for c in lines.values())


def test_every_documented_command_and_option_exists():
    failures, seen = [], 0
    for path in DOCUMENTS:
        for line, command in _commands(path):
            seen += 1
            failures += [f"{path}:{line}: {p}  [trilemma {command[:120]}]" for p in _problems(command)]
    assert seen > 150, seen                                     # the documents really were read
    assert not failures, "\n".join(failures)
