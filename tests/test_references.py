"""The documentation is self-contained: nothing in the package, the docs or the README cites a
document that does not ship with the repository.

Checked in every text file under kernelcert/ and docs/, and in README.md:

* no citation of the project's private design notes (the specification cited as "SPEC §n" or
  SPEC.md, the anchors note cited as "anchors §n" or anchors.md, anything under shared/ or
  seeds/): their content lives in docs/math.md, which the code cites instead;
* every citation "docs/math.md §n" (or "math.md §n"), and every bare "§n" inside docs/math.md and
  docs/references.md (which refer to docs/math.md), names a section that exists in docs/math.md;
* every relative markdown link or image resolves to a file in the repository, and a link
  fragment (#...) to an anchor or heading of the linked markdown file;
* every repository path mentioned in the text (docs/..., kernelcert/..., tests/..., benchmarks/...,
  configs/...) exists (globs must match at least one file).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml  # PyYAML, pinned in requirements.lock (a dask dependency)

import kernelcert

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.references

ROOT = Path(__file__).resolve().parent.parent
MATH = ROOT / "docs" / "math.md"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cff", ".cfg", ".json", ".yaml", ".yml"}

# Citations of documents that are not in the repository (the private project notes).
PRIVATE_DOCS = [
    (re.compile(r"\bSPEC(?:\.md)?\s*(?:§|section\b|sec\.)", re.I), "the specification (SPEC §n)"),
    (re.compile(r"\bSPEC\.md\b"), "SPEC.md"),
    (re.compile(r"\banchors(?:\.md)?\s*§", re.I), "the anchors note (anchors §n)"),
    (re.compile(r"\banchors\.md\b", re.I), "anchors.md"),
    (re.compile(r"(?<![\w.-])shared/"), "a path under shared/"),
    (re.compile(r"(?<![\w.-])seeds/"), "a path under seeds/"),
]
MATH_CITATION = re.compile(r"math\.md,?[^\S\n]*((?:§[^\S\n]?\d+(?:\.\d+)*(?:[^\S\n]*(?:[-–,/]|and|or)[^\S\n]*)?)+)")
SECTION_NUMBER = re.compile(r"§[^\S\n]?(\d+(?:\.\d+)*)")
MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|kernelcert|tests|benchmarks|configs)/[A-Za-z0-9_./*-]*[A-Za-z0-9_*/])")


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in ("kernelcert", "docs"):
        files += sorted(p for p in (ROOT / top).rglob("*")
                        if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts)
    return files


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def math_sections() -> set[str]:
    """Section numbers of docs/math.md: headings "## 3. ...", "### 3.6 ...", "#### 7.0.2 ..."."""
    heads = re.findall(r"^#{1,6}[^\S\n]+(\d+(?:\.\d+)*)\.?[^\S\n]", MATH.read_text(encoding="utf-8"), flags=re.M)
    return set(heads)


def github_slug(heading: str) -> str:
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors_of(md: Path) -> set[str]:
    text = md.read_text(encoding="utf-8")
    ids = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    ids |= {github_slug(h) for h in re.findall(r"^#{1,6}[^\S\n]+(.+?)[^\S\n]*#*$", text, flags=re.M)}
    return ids


def test_math_sections_follow_the_documented_numbering():
    """The section numbers the code cites: §1-§6 (the certificates and their checks), §7.0-§7.7 (the
    published methods, §7.0.1-§7.0.5 their conventions), each with a stable anchor."""
    sections = math_sections()
    expected = {str(i) for i in range(1, 11)} | {f"7.{i}" for i in range(8)} | {f"7.0.{i}" for i in range(1, 6)}
    assert expected <= sections, f"docs/math.md lacks sections {sorted(expected - sections)}"
    ids = anchors_of(MATH)
    missing = sorted(s for s in sections if "s" + s.replace(".", "-") not in ids)
    assert not missing, f"docs/math.md sections without a stable anchor <a id=\"s..\">: {missing}"


def test_no_citation_of_documents_outside_the_repository():
    found = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8")
        for pattern, what in PRIVATE_DOCS:
            for m in pattern.finditer(text):
                found.append(f"{rel(path)}:{line_of(text, m.start())}: cites {what}: {m.group(0)!r}")
    assert not found, ("cite docs/math.md sections or the papers (docs/references.md) instead:\n"
                       + "\n".join(found))


def test_math_section_citations_exist():
    sections = math_sections()
    bad = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8")
        spans = [(m.start(1), m.group(1)) for m in MATH_CITATION.finditer(text)]
        if path in (MATH, ROOT / "docs" / "references.md"):  # bare §n there refers to docs/math.md
            spans.append((0, text))
        for start, chunk in spans:
            for m in SECTION_NUMBER.finditer(chunk):
                if m.group(1) not in sections:
                    pos = start + m.start() if chunk is not text else m.start()
                    bad.append(f"{rel(path)}:{line_of(text, pos)}: docs/math.md has no section §{m.group(1)}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_relative_links_resolve():
    bad = []
    for path in scanned_files():
        if path.suffix != ".md":
            continue
        text = path.read_text(encoding="utf-8")
        for m in MD_LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{rel(path)}:{line_of(text, m.start())}"
            if not dest.exists() or ROOT not in (dest, *dest.parents):
                bad.append(f"{where}: link to {target!r}: no such file in the repository")
            elif fragment and dest.suffix == ".md" and fragment not in anchors_of(dest):
                bad.append(f"{where}: link to {target!r}: no anchor #{fragment} in {rel(dest)}")
    assert not bad, "\n".join(bad)


def test_mentioned_repository_paths_exist():
    bad = []
    for path in scanned_files():
        text = path.read_text(encoding="utf-8")
        for m in REPO_PATH.finditer(text):
            p = m.group(1).rstrip(".")
            if "*" in p:
                ok = any(ROOT.glob(p))
            else:
                ok = (ROOT / p).exists()
            if not ok:
                bad.append(f"{rel(path)}:{line_of(text, m.start())}: mentions {p!r}, which is not in the repository")
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_should(tmp_path):
    """The patterns above are not vacuous: each flags a typical offending line and passes its fix."""
    offending = ["see SPEC §3", "(SPEC §2-§5)", "anchors §0.2", "anchors.md §0.2", "`shared/SPEC.md`",
                 "seeds/000_x.txt"]
    for line in offending:
        assert any(p.search(line) for p, _ in PRIVATE_DOCS), line
    for line in ["see docs/math.md §3", "SPECIFIC", "specification", "anchor convention", "shared memory"]:
        assert not any(p.search(line) for p, _ in PRIVATE_DOCS), line
    chunk = MATH_CITATION.search("docs/math.md §2–§5, and more").group(1)
    assert SECTION_NUMBER.findall(chunk) == ["2", "5"]
    assert [m.group(1) for m in MD_LINK.finditer("[a](math.md#s3) ![b](img/x.png) [c](https://x.org)")] == [
        "math.md#s3", "img/x.png", "https://x.org"]
    assert REPO_PATH.findall("see docs/math.md, or `benchmarks/results/*.json`.") == [
        "docs/math.md", "benchmarks/results/*.json"]
    assert github_slug("1. Threat model and what a certificate says") == "1-threat-model-and-what-a-certificate-says"


def test_license_citation_and_version_have_one_source():
    """LICENSE is the MIT text pyproject declares (SPDX), CITATION.cff is CFF 1.2.0 and points at the
    papers, the version lives only in kernelcert/_version.py (re-exported as kernelcert.__version__), and py.typed ships as package data."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kernelcert._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:\.dev\d+|rc\d+)?", kernelcert.__version__)
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["kernelcert"]
    assert (ROOT / "kernelcert" / "py.typed").is_file()

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    assert {"message", "title", "authors"} <= set(cff) and cff["license"] == "MIT"
    assert "version" not in cff  # one version source
    titles = " | ".join(ref["title"] for ref in cff["references"])
    for paper in ("Partition Aggregation Ensembles against Label Poisoning", "Deep Partition Aggregation",
                  "Finite Aggregation", "Run-Off Election", "Against Label Poisoning", "Neural Tangent Kernel"):
        assert paper in titles, paper
