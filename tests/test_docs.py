"""The documentation stands alone: no doc, README or source file cites a file outside the
repository (the reference notes the project was built from are not shipped with it); each fact
is written into the repository's own docs, with the paper's section numbers."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = ("paper_spec", "cbp_bitflip_spec", "../shared")
WHERE = ["README.md", "docs", "core", "sweeps", "cluster", "analysis"]


def _files() -> list[Path]:
    found = []
    for where in WHERE:
        path = REPO / where
        found += (
            [path] if path.is_file() else sorted(path.rglob("*.py")) + sorted(path.rglob("*.md"))
        )
    return found


def test_no_doc_or_source_file_cites_a_file_outside_the_repository():
    cited = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in _files()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(name in line for name in OUTSIDE)
    ]
    assert cited == [], "\n".join(cited)


def test_every_doc_the_readme_lists_exists_and_every_doc_is_listed():
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"docs/([\w-]+\.md)", readme))
    docs = {p.name for p in (REPO / "docs").glob("*.md")}
    assert sorted(listed - docs) == []  # no dangling link
    assert sorted(docs - listed) == []  # no doc a reader cannot find
    assert {"architecture.md", "extending.md", "diagnose.md"} <= listed
