"""The inputs and outputs tables of terraform/README.md, generated from the module's .tf files.

    python -m tools.terraform_docs           # print the tables
    python -m tools.terraform_docs --write   # replace them in terraform/README.md
    python -m tools.terraform_docs --check   # exit 1 if the README's tables are stale

The tables sit between the BEGIN_TF_DOCS / END_TF_DOCS markers (terraform-docs' convention), one
row per variable and output, sorted by name. Only python-hcl2 is needed, no terraform binary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import SerializationOptions

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "terraform"
README = MODULE / "README.md"
BEGIN = "<!-- BEGIN_TF_DOCS -->"
END = "<!-- END_TF_DOCS -->"

_OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True, preserve_heredocs=False
)


def _blocks(kind: str, module: Path) -> dict[str, dict[str, Any]]:
    """Every `kind` block (variable or output) of the module's .tf files, by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(module.glob("*.tf")):
        with open(path, encoding="utf-8") as handle:
            parsed = hcl2.load(handle, serialization_options=_OPTIONS)
        for block in parsed.get(kind, []):
            found.update(block)
    return found


def _unwrap(expression: str) -> str:
    """ "${map(string)}" -> "map(string)"; a literal stays as it is."""
    if expression.startswith("${") and expression.endswith("}"):
        return expression[2:-1]
    return expression


def _hcl_value(value: Any) -> str:
    """A default as HCL writes it (strings quoted, template escapes as in the file)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value.startswith("${") and value.endswith("}"):
            return value[2:-1]
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_hcl_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_hcl_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", "<br>").strip()


def _code(text: str) -> str:
    """Inline code that survives backticks inside it."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"


def render(module: Path = MODULE) -> str:
    """The Inputs and Outputs sections, Markdown, between the markers."""
    lines = [
        BEGIN,
        "## Inputs",
        "",
        "| Name | Description | Type | Default | Required |",
        "|------|-------------|------|---------|:--------:|",
    ]
    for name, body in sorted(_blocks("variable", module).items()):
        required = "default" not in body
        default = "n/a" if required else _code(_hcl_value(body["default"]))
        kind = _code(_unwrap(str(body.get("type", "any"))))
        lines.append(
            f"| {name} | {_cell(body.get('description', ''))} | {kind} | {default} | {'yes' if required else 'no'} |"
        )
    lines += ["", "## Outputs", "", "| Name | Description |", "|------|-------------|"]
    for name, body in sorted(_blocks("output", module).items()):
        lines.append(f"| {name} | {_cell(body.get('description', ''))} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def replace_tables(readme: str, tables: str) -> str:
    """`readme` with the text from BEGIN to END (inclusive) replaced by `tables`."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{README.name} must hold the markers {BEGIN} and {END}")
    return readme[:start] + tables + readme[end + len(END) :].lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update terraform/README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if terraform/README.md is stale")
    args = parser.parse_args(argv)
    tables = render()
    if not (args.write or args.check):
        sys.stdout.write(tables)
        return 0
    current = README.read_text(encoding="utf-8")
    wanted = replace_tables(current, tables)
    if args.check:
        if wanted != current:
            print("terraform/README.md is stale: run python -m tools.terraform_docs --write", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
