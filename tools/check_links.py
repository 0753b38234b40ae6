"""Every relative Markdown link in README.md, BENCHMARKS.md, CHANGELOG.md and docs/ names a file
(and, for a Markdown file, a heading) that exists.

    python -m tools.check_links [ROOT]   # prints the broken links; exit 1 if there are any
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (lower case, punctuation dropped)."""
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#+ (.*)", line)
        if heading:
            found.add(re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-"))
    return found


def broken_links(root: Path) -> list[str]:
    files = [root / "README.md", root / "BENCHMARKS.md", root / "CHANGELOG.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for file in files:
        text = re.sub(r"```.*?```", "", file.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (file.parent / path).resolve() if path else file
            if not dest.exists():
                broken.append(f"{file.relative_to(root)}: no file {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{file.relative_to(root)}: no heading {target}")
    return broken


def main() -> int:
    broken = broken_links(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
    print("\n".join(broken) or "every link resolves")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
