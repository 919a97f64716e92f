"""Every link in the README and the docs stays inside the repository and points at something there.

A relative link (`[text](docs/METHOD.md)`, an image, a reference definition `[x]: path`) is resolved
against the Markdown file's folder and must exist inside the checkout; a `#fragment` into a Markdown
file must name one of its headings (GitHub's anchors). Web links (`https:`, `mailto:`) are not
followed. Paths written in code (inline or fenced: commands run from the repository root) must not
climb out of it (`../shared/...`) nor name a machine's own folders (`/home/...`, `/work/...`).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted({ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("benchmarks/**/*.md"),
               *ROOT.glob("assets/**/*.md"), *ROOT.glob("recipes/**/*.md"), ROOT / "checkpoints" / "README.md"})
DOCS = [p for p in DOCS if p.is_file()]

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]+(?:\([^()\s]*\)[^()\s>]*)*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
CLIMB = re.compile(r"(?<![\w./~-])(?:\.\./)+[\w.~-][\w./~-]*")
MACHINE = re.compile(r"(?<![\w./~-])/(?:home|work|root|Users|mnt|shared|scratch)/[\w./~-]*")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text with fenced blocks and inline code blanked (links are not parsed inside code)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), text)


def _code(text: str) -> list[str]:
    return [m.group(0) for m in FENCE.finditer(text)] + [m.group(2) for m in INLINE_CODE.finditer(FENCE.sub("", text))]


def links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    return [m.group(1) for m in LINK.finditer(prose)] + [m.group(1) for m in REFERENCE.finditer(prose)]


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file: lower case, punctuation dropped
    (word characters, hyphens and spaces kept), spaces to hyphens, repeats numbered -1, -2, ..."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for line in text.splitlines():
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if not m:
            continue
        heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link in a heading: its label
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        anchors.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return anchors


def problems(path: Path, root: Path = ROOT) -> list[str]:
    out = []
    for target in links(path):
        if SCHEME.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        if file_part.startswith("/"):
            out.append(f"{target}: an absolute path (a link must be relative to the file)")
            continue
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(root):
            out.append(f"{target}: leaves the repository ({dest})")
        elif not dest.exists():
            out.append(f"{target}: {dest.relative_to(root)} does not exist")
        elif fragment and dest.suffix == ".md" and fragment not in github_anchors(dest):
            out.append(f"{target}: {dest.relative_to(root)} has no heading with the anchor #{fragment}")
    for code in _code(path.read_text(encoding="utf-8")):
        for m in CLIMB.finditer(code):
            if not (root / m.group(0)).resolve().is_relative_to(root):
                out.append(f"`{m.group(0)}`: a path in code that leaves the repository (commands run from its root)")
        out += [f"`{m.group(0)}`: a path of one machine, outside the repository" for m in MACHINE.finditer(code)]
    return out


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_links_stay_in_the_repository_and_resolve(path):
    assert not problems(path), f"{_rel(path)}:\n  " + "\n  ".join(problems(path))


def test_the_checker_finds_what_it_should(tmp_path):
    """Each kind of bad link is reported; good ones (relative, web, anchors that exist) are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## The GPU check (`benchmarks/gpu_check.sh`)\n\n## Title\n")
    (tmp_path / "shared").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Top\n\n[ok](docs/a.md) [ok](docs/a.md#the-gpu-check-benchmarksgpu_checksh) [ok](docs/a.md#title-1) "
        "[web](https://example.org/x) ![img](docs/a.md) [self](#top)\n"
        "[up](../shared/data.md) [abs](/etc/passwd) [gone](docs/missing.md) [anchor](docs/a.md#nope)\n"
        "`[not a link](nowhere.md)` and `--out ../shared/run` and `/home/me/x`\n\n"
        "```bash\ncp x ../outside/y   # [code](not-a-link.md)\n```\n\n"
        "[ref]: ../../elsewhere.md\n")
    found = problems(readme, root=tmp_path)
    expected = ["../shared/data.md: leaves", "/etc/passwd: an absolute path", "docs/missing.md does not exist",
                "no heading with the anchor #nope", "../../elsewhere.md: leaves", "`../outside/y`",
                "`../shared/run`", "`/home/me/x`"]
    assert len(found) == len(expected), found
    for needle in expected:
        assert any(needle in p for p in found), (needle, found)
