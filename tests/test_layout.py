"""The repository's own rules, checked: packaging lists every package, modules stay small, cited files exist."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = {"decaf_kernels": ROOT / "decaf_kernels", "decaf_lora": ROOT / "python_api" / "decaf_lora"}
MAX_LINES = 600


def _packages_on_disk() -> set:
    found = set()
    for name, root in PACKAGE_ROOTS.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_is_installed():
    """setuptools installs only the packages pyproject.toml lists: a subpackage missing there works in the editable
    checkout and vanishes from a wheel (where the kernels' import would fail into the slow fallback)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


def test_modules_stay_small():
    """One job per module: none over 600 lines unless its opening docstring says why (the word "lines")."""
    big = []
    for root in PACKAGE_ROOTS.values():
        for path in root.rglob("*.py"):
            text = path.read_text()
            head = re.match(r'\s*(?:#[^\n]*\n\s*)*(?:"""(.*?)""")?', text, re.S).group(1) or ""
            if text.count("\n") > MAX_LINES and "lines" not in head:
                big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert not big, big


# paths the code and the README cite: docs/*.md, bench/*.md, csrc/... headers and sources
_CITED = re.compile(r"(?<![\w/.])((?:docs|bench|csrc)/[\w./-]+\.(?:md|h|cuh|cu|cpp|py|sh))\b")


def test_cited_files_exist():
    sources = [ROOT / "README.md", ROOT / "bench" / "README.md"]
    for folder in ("decaf_kernels", "python_api", "bench", "csrc", "tests"):
        sources += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".h", ".cpp", ".cu", ".cuh", ".sh")]
    missing = sorted({f"{src.relative_to(ROOT)} cites {m}" for src in sources
                      for m in _CITED.findall(src.read_text(errors="replace")) if not (ROOT / m).exists()})
    assert not missing, missing
    assert not [s for s in sources if re.search(r"\bDESIGN\.md\b|\bSTYLE\.md\b|\.\./shared", s.read_text())]
