"""The repository's documentation is self-contained: no reference leaves the repository, every link lands.

Walks every text file git knows about (tracked, plus untracked files that are not ignored;
binary files skipped) and checks three things:

1. nothing mentions the old out-of-tree reference files: the parent-directory ``shared`` folder,
   its ``reference`` and style files, or the upper-case methods file name (the maths lives in
   docs/methods.md now);
2. every relative markdown link ``[text](path)`` / ``[text](path#anchor)`` / ``[text](#anchor)``
   in a ``.md`` file points at a file or folder of the repository, and its anchor is a heading of
   the target (GitHub's slug rules) or an explicit ``<a id=…>`` / ``<a name=…>``;
3. every section reference that follows the methods document, as in "docs/methods.md §5",
   "methods.md §10–12" or "docs/methods.md §4, §6" (also "§3 of docs/methods.md"), names a
   heading numbered N (or N.M) in docs/methods.md.

Failures are listed as ``file:line: what``, all at once.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods.md"

# The forbidden strings are assembled from pieces so that this file does not contain them itself.
_UP = ".."
FORBIDDEN = (
    f"{_UP}/shared",
    "shared/" + "reference",
    "shared/" + "STYLE",
    "METHODS" + ".md",
    "STYLE" + ".md",
)

# Where to look when git cannot list the files (an unpacked archive, say).
FALLBACK_GLOBS = ("README.md", "CONTRIBUTING.md", "pyproject.toml", "docs/**/*.md", "trilemma/**/*.py",
                  "tests/**/*.py", "scripts/*", "bench/*", ".ci/*")

# ------------------------------------------------------------------------------------- file listing


def _git_files(*args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", *args], capture_output=True, check=True)
    return [name for name in out.stdout.decode("utf-8", "surrogateescape").split("\0") if name]


@lru_cache(maxsize=None)
def repo_files() -> tuple[Path, ...]:
    """Tracked files plus untracked, non-ignored ones that exist in the working tree (sorted)."""
    try:
        names = set(_git_files()) | set(_git_files("--others", "--exclude-standard"))
        paths = {ROOT / name for name in names}
    except (OSError, subprocess.CalledProcessError):
        paths = {p for pattern in FALLBACK_GLOBS for p in ROOT.glob(pattern)}
    return tuple(sorted(p for p in paths if p.is_file()))


@lru_cache(maxsize=None)
def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_files() -> list[tuple[Path, str]]:
    return [(p, text) for p in repo_files() if (text := read_text(p)) is not None]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


# ------------------------------------------------------------------------------------- markdown

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); target may be <…> and may carry a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)"
                         r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")   # http:, https:, mailto:, ftp:, //host …


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the markdown outside fenced code blocks, with inline code blanked out."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            continue
        if fence is not None:
            if match and match.group(1).startswith(fence) and not line.strip()[len(match.group(1)):].strip():
                fence = None
            continue
        out.append((number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)))
    return out


def _heading_plain_text(raw: str) -> str:
    """The rendered text of a heading: inline code kept as text, links as their text, no emphasis or HTML."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)       # links and images → their text
    text = re.sub(r"<[^>]+>", "", text)                          # inline HTML
    text = text.replace("`", "")
    text = re.sub(r"(\*{1,3})(?=\S)(.+?)(?<=\S)\1", r"\2", text)  # *em*, **strong**
    text = re.sub(r"(?<![\w])(_{1,3})(?=\S)(.+?)(?<=\S)\1(?![\w])", r"\2", text)  # _em_, __strong__
    return text.strip()


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case; keep letters, marks, numbers, '_', '-', spaces; spaces → '-'."""
    kept = []
    for ch in _heading_plain_text(heading).lower():
        category = unicodedata.category(ch)
        if ch in " -" or category[0] in "LMN" or category == "Pc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


@lru_cache(maxsize=None)
def headings(path: Path) -> tuple[tuple[int, str, str], ...]:
    """(line, level-marks, heading text) of every ATX heading outside code blocks."""
    text = read_text(path) or ""
    lines = text.splitlines()
    found = []
    for number, _ in prose_lines(text):
        match = HEADING.match(lines[number - 1])
        if match:
            found.append((number, match.group(1), match.group(2)))
    return tuple(found)


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """Every anchor GitHub makes in a markdown file: heading slugs (duplicates get -1, -2 …) and <a id/name>."""
    seen: dict[str, int] = {}
    out = set()
    for _, _, text in headings(path):
        slug = github_slug(text)
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        out.add(slug)
    out.update(HTML_ANCHOR.findall(read_text(path) or ""))
    return frozenset(out)


def markdown_links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and reference definition outside code."""
    links = []
    for number, line in prose_lines(text):
        for match in INLINE_LINK.finditer(line):
            links.append((number, match.group(1)))
        definition = REFERENCE_DEF.match(line)
        if definition:
            links.append((number, definition.group(1)))
    return [(n, target[1:-1] if target.startswith("<") else target) for n, target in links]


def check_link(page: Path, target: str) -> str | None:
    """None if ``target`` (as written in ``page``) resolves, else what is wrong."""
    target = target.strip()
    if not target or EXTERNAL.match(target):
        return None
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part.split("?", 1)[0])
    if path_part:
        dest = (ROOT / path_part.lstrip("/")) if path_part.startswith("/") else (page.parent / path_part)
        dest = dest.resolve()
        if not dest.is_relative_to(ROOT):
            return f"link {target!r} leaves the repository"
        if not dest.exists():
            return f"link {target!r}: {dest.relative_to(ROOT).as_posix()} does not exist"
    else:
        dest = page
    if anchor and dest.is_file() and dest.suffix.lower() == ".md":
        anchor = unquote(anchor)
        if anchor not in anchors(dest):
            return f"link {target!r}: no heading with anchor #{anchor} in {rel(dest)}"
    return None


# ------------------------------------------------------------------------------------- § references

_NUM = r"\d+(?:\.\d+)*"
# one "§N", "§N.M", "§N–M" or "§N–§M" item; en dash, em dash or hyphen for ranges
_ITEM = rf"§\s*{_NUM}(?:\s*[–—-]\s*§?\s*{_NUM})?"
# the items after "methods.md", joined by commas, "and", "or", "&" or "/"
_CHAIN = rf"{_ITEM}(?:\s*(?:,|;|/|&|\band\b|\bor\b)\s*{_ITEM})*"
# "methods.md", then closing backticks / quotes / brackets of a link or code span, then the chain
SECTION_REF_AFTER = re.compile(rf"methods\.md(?:[`'\"\]*_]*\([^)\s]*\))?[`'\"\]*_)]*[ \t]*\(?\s*(?:#\s*)?(?P<chain>{_CHAIN})")
# "§3 of docs/methods.md", "§3 in methods.md"
SECTION_REF_BEFORE = re.compile(rf"(?P<chain>{_CHAIN})\s+(?:of|in)\s+[`'\"\[]*(?:docs/)?methods\.md")
ITEM = re.compile(rf"§\s*(?P<a>{_NUM})(?:\s*[–—-]\s*§?\s*(?P<b>{_NUM}))?")


@lru_cache(maxsize=None)
def methods_sections() -> frozenset[str]:
    """The numbers ("5", "5.1" …) of the numbered headings of docs/methods.md."""
    if not METHODS.is_file():
        return frozenset()
    numbers = set()
    for _, _, text in headings(METHODS):
        match = re.match(rf"§?\s*({_NUM})\.?(?:\s|$)", text)
        if match:
            numbers.add(match.group(1))
    return frozenset(numbers)


def referenced_sections(chain: str) -> list[str]:
    """The section numbers a chain names: "§10–12" → 10, 11, 12; "§5.1" → 5.1; "§4, §6" → 4, 6."""
    out = []
    for match in ITEM.finditer(chain):
        a, b = match.group("a"), match.group("b")
        if b and "." not in a and "." not in b and int(a) <= int(b):
            out.extend(str(n) for n in range(int(a), int(b) + 1))
        else:
            out.extend(n for n in (a, b) if n)
    return out


def section_references(text: str) -> list[tuple[int, str, str]]:
    """(line, section number, the text as written) of every § reference tied to docs/methods.md."""
    refs = []
    for pattern in (SECTION_REF_AFTER, SECTION_REF_BEFORE):
        for match in pattern.finditer(text):
            written = " ".join(match.group(0).split())
            for number in referenced_sections(match.group("chain")):
                refs.append((line_of(text, match.start("chain")), number, written))
    return refs


# ------------------------------------------------------------------------------------- the tests


def test_the_file_list_is_sane():
    names = {rel(p) for p in repo_files()}
    assert "README.md" in names and "pyproject.toml" in names, sorted(names)[:20]
    assert any(n.startswith("trilemma/") and n.endswith(".py") for n in names)
    assert "docs/methods.md" in names, "docs/methods.md (the maths of every model) is missing"


def test_nothing_points_outside_the_repository():
    problems = []
    for path, text in text_files():
        for number, line in enumerate(text.splitlines(), start=1):
            for needle in FORBIDDEN:
                if needle in line:
                    problems.append(f"{rel(path)}:{number}: mentions {needle!r} (a file outside the repository); "
                                    f"refer to docs/methods.md §N instead: {line.strip()[:120]}")
    assert not problems, "\n" + "\n".join(problems)


def test_relative_markdown_links_resolve():
    problems = []
    for path, text in text_files():
        if path.suffix.lower() != ".md":
            continue
        for number, target in markdown_links(text):
            problem = check_link(path, target)
            if problem:
                problems.append(f"{rel(path)}:{number}: {problem}")
    assert not problems, "\n" + "\n".join(problems)


def test_methods_sections_1_to_12_exist_in_order():
    assert METHODS.is_file(), "docs/methods.md is missing"
    top = [(text, line) for line, marks, text in headings(METHODS) if marks == "##"]
    numbered = [(int(m.group(1)), line) for text, line in top if (m := re.match(r"(\d+)\.\s", text))]
    assert [n for n, _ in numbered] == list(range(1, 13)), (
        f"docs/methods.md: the numbered '## N. …' sections must be 1..12 in order, got {[n for n, _ in numbered]}")
    for _, _, text in headings(METHODS):
        assert github_slug(text), f"docs/methods.md: heading {text!r} has an empty anchor"


def test_section_references_resolve():
    sections = methods_sections()
    problems = []
    for path, text in text_files():
        for number, section, written in section_references(text):
            if section not in sections:
                problems.append(f"{rel(path)}:{number}: {written!r} names §{section}, "
                                f"which is not a numbered heading of docs/methods.md")
    assert not problems, "\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("heading, slug", [
    ("1. Variational autoencoder (VAE)", "1-variational-autoencoder-vae"),
    ("Side by side: VAE, GAN, DDPM", "side-by-side-vae-gan-ddpm"),
    ("5.1 Training: Algorithm 1 of Ho et al.", "51-training-algorithm-1-of-ho-et-al"),
    ("The `--spacing` option", "the---spacing-option"),
    ("**Bold** and _em_ and snake_case", "bold-and-em-and-snake_case"),
    ("ε-prediction — x̂₀", "ε-prediction--x̂₀"),
    ("Link [text](other.md) here", "link-text-here"),
])
def test_github_slug(heading, slug):
    assert github_slug(heading) == slug


def test_section_reference_parsing():
    text = ("see docs/methods.md §5 and methods.md §10–12;\n"
            "(docs/methods.md §4, §6) [`docs/methods.md`](docs/methods.md) §5.1, and §3 of docs/methods.md.\n"
            "Ho et al. 2020 §3.3 is a paper section, not ours.")
    refs = [(line, n) for line, n, _ in section_references(text)]
    assert refs == [(1, "5"), (1, "10"), (1, "11"), (1, "12"), (2, "4"), (2, "6"), (2, "5.1"), (2, "3")]


def test_link_parsing_skips_code_and_external_links(tmp_path):
    text = ("[a](docs/x.md#y) ![img](img/p.png \"title\") [web](https://example.org/a_(b)) [m](mailto:a@b)\n"
            "`[not](a link)`\n```\n[not](either)\n```\n[ref]: <path/with space.md>\n[self](#top)\n")
    targets = [t for _, t in markdown_links(text)]
    assert targets == ["docs/x.md#y", "img/p.png", "https://example.org/a_(b)", "mailto:a@b",
                       "path/with space.md", "#top"]
    assert check_link(ROOT / "README.md", "https://example.org/missing") is None
    assert check_link(ROOT / "README.md", "no/such/file.md") is not None
    assert check_link(ROOT / "README.md", "#no-such-heading-anywhere") is not None
