"""The configuration reference in README.md, written from configs/config.yaml: one table per
section with every key, its value in this project and the comment that explains it.

    python scripts/config_reference.py           # rewrite the section of README.md
    python scripts/config_reference.py --check   # exit 1 when README.md is out of date

Standard library only: the bake runs it before anything is installed, and a test checks that
README.md, config.yaml and the schema in config.py agree.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN config reference: written by scripts/config_reference.py from configs/config.yaml -->"
END = "<!-- END config reference -->"
LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")


def entries(config_text: str) -> list[tuple[str, str, str]]:
    """(dotted key, value, comment) for every key of a YAML file laid out like config.yaml:
    two-space indentation, one key per line, a comment after the value. Section lines (no
    value) come with an empty value."""
    rows, path = [], []
    for line in config_text.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        depth = len(match["indent"]) // 2
        path = path[:depth] + [match["key"]]
        rows.append((".".join(path), match["value"].strip(), (match["comment"] or "").strip()))
    return rows


def reference(config_text: str) -> str:
    """The markdown tables, a section each (top-level keys first)."""
    sections: dict[str, list[str]] = {"": []}
    notes: dict[str, str] = {}
    for key, value, comment in entries(config_text):
        if not value:                                # a section line: a top-level one's comment introduces its table
            if "." not in key:
                sections[key], notes[key] = [], comment
            continue
        section = key.partition(".")[0] if "." in key else ""
        sections[section].append(f"| `{key}` | `{value}` | {comment.replace('|', '/')} |")
    parts = []
    for section, rows in sections.items():
        title = f"`{section}`" if section else "top level"
        intro = f": {notes[section]}" if notes.get(section) else ""
        parts += [f"**{title}**{intro}", "", "| key | value here | what it does |", "|---|---|---|", *rows, ""]
    return "\n".join(parts).rstrip() + "\n"


def updated_readme(readme: str, config_text: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + reference(config_text) + readme[end:]


def main() -> int:
    readme_file, config_file = PROJECT / "README.md", PROJECT / "configs" / "config.yaml"
    readme, new = readme_file.read_text(), updated_readme(readme_file.read_text(), config_file.read_text())
    if "--check" in sys.argv[1:]:
        if new != readme:
            print("README.md's configuration reference is out of date: run python scripts/config_reference.py")
            return 1
        return 0
    readme_file.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
