"""The specification ships with the code: every ``docs/methods.md §x.y`` the code cites exists there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITING = ["attnrl", "kernels", "rewards", "benchmarks", "examples", "tests", "README.md", "docs"]
CITATION = re.compile(r"methods\.md\s*§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4}\s*§(\d+(?:\.\d+)*)\s", re.MULTILINE)


def _files():
    for name in CITING:
        path = ROOT / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in path.rglob("*") if p.suffix in {".py", ".md", ".yaml", ".sh"} and p.is_file())


def sections() -> set[str]:
    return set(HEADING.findall((ROOT / "docs" / "methods.md").read_text()))


def citations() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in _files():
        for sec in CITATION.findall(path.read_text(errors="ignore")):
            found.setdefault(sec, set()).add(str(path.relative_to(ROOT)))
    return found


def test_methods_page_has_the_spec_sections():
    assert {"1", "1.1", "1.2", "1.3", "1.4", "2", "2.1", "2.2", "2.3", "2.4", "3"} <= sections()


def test_every_cited_section_exists():
    cited = citations()
    assert cited, "no code cites docs/methods.md: the citation pattern is broken"
    missing = {sec: sorted(files) for sec, files in cited.items() if sec not in sections()}
    assert not missing, f"cited sections missing from docs/methods.md: {missing}"


def test_no_citation_points_outside_the_repository():
    offenders = [
        str(p.relative_to(ROOT)) for p in _files() if p.name != "test_docs.py" and "METHODS.md" in p.read_text(errors="ignore")
    ]
    assert not offenders, f"these files cite METHODS.md, which users do not get; cite docs/methods.md: {offenders}"
