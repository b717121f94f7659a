"""The README and docs/ stay true to the tree: relative links (and their #anchors) resolve, every `lm-eval-iti X` and
`make X` they name exists, every docs page is reachable from the README, and the README stays short."""

import re
from pathlib import Path

import pytest

from lm_eval_iti.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def code_text(text: str) -> str:
    """Fenced blocks and inline code spans: where commands are named (prose may say 'make a model ...')."""
    fenced = FENCE.findall(text)
    return "\n".join(fenced + INLINE_CODE.findall(FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github():
    assert slug("Exports: lm-eval's `steered` model and baked checkpoints") == \
        "exports-lm-evals-steered-model-and-baked-checkpoints"
    assert slug("The real-model study: SmolLM2-135M-Instruct, offline") == \
        "the-real-model-study-smollm2-135m-instruct-offline"
    assert slug("Judges: True, Info and True*Info") == "judges-true-info-and-trueinfo"


def test_there_are_docs_pages():
    assert len(PAGES) >= 8, _ids(PAGES)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, broken


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"README.md has {lines} lines; reference material belongs in docs/"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, unlinked


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_cli_commands_exist(page):
    named = set(re.findall(r"(?<![\w/-])lm-eval-iti ([a-z][a-z-]*)", code_text(page.read_text(encoding="utf-8"))))
    assert not named - set(COMMANDS), (sorted(named - set(COMMANDS)), sorted(COMMANDS))


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_make_targets_exist(page):
    named = set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", code_text(page.read_text(encoding="utf-8"))))
    assert not named - makefile_targets(), (sorted(named - makefile_targets()), sorted(makefile_targets()))


def test_the_checks_can_fail(tmp_path):
    """The extractors find what a wrong page would name."""
    text = "Run `lm-eval-iti fit-direction --x` or\n```bash\nmake tests\nlm-eval-iti validate\n```\nmake a model"
    code = code_text(text)
    assert set(re.findall(r"(?<![\w/-])lm-eval-iti ([a-z][a-z-]*)", code)) == {"fit-direction", "validate"}
    assert set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", code)) == {"tests"}
    assert "fit-direction" not in COMMANDS and "tests" not in makefile_targets()
    page = tmp_path / "p.md"
    page.write_text("# A `b`: c\n\n## A `b`: c\n", encoding="utf-8")
    assert anchors(page) == {"a-b-c", "a-b-c-1"}
