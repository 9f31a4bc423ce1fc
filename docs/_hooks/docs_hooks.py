"""Build-time helpers of the documentation site, loaded by mkdocs as hooks (see mkdocs.yml).

- The request options table in the user guide is generated from `longshap.hierarchy.options`,
  the one declaration of every option, wherever a page holds the OPTIONS_MARKER comment.
- mkdocstrings reads the sources statically: it finds the `longshap` namespace through a
  folder of links (build/docs-src/longshap/hierarchy -> hierarchy/, ...), since the
  editable install maps the folders with setuptools' package-dir, which static analysis
  cannot follow. The links are made first thing in the build, before mkdocstrings starts.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

try:
    from mkdocs.plugins import event_priority
except ImportError:  # tests/test_docs.py checks the options table without installing the docs extra
    def event_priority(priority: float) -> Any:
        return lambda hook: hook

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "build" / "docs-src"
"""mkdocs.yml points mkdocstrings' `paths` here."""
PACKAGES = ("hierarchy", "server", "client", "proto")
OPTIONS_MARKER = "<!-- options-table -->"


def link_sources() -> Path:
    """Make build/docs-src/longshap/<package> links to the repository's package folders; return build/docs-src."""
    namespace = SOURCES / "longshap"
    namespace.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        link = namespace / package
        if link.is_symlink():
            continue
        if link.exists():
            shutil.rmtree(link)
        link.symlink_to(os.path.relpath(ROOT / package, namespace), target_is_directory=True)
    return SOURCES


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _values(option: Any) -> str:
    if option.allowed:
        text = ", ".join(f"`{name}`" for name in option.allowed)
        text = f"list of {text}" if option.repeated else text
    elif option.kind is bool:
        text = "true or false"
    elif option.kind is str:
        text = "text"
    else:
        text = option.requirement
    return f"{text}, per level" if option.per_level else text


def _default(option: Any) -> str:
    default = option.default
    if default is None:
        return "unset"
    if default is False:
        return "off"
    if isinstance(default, dict):
        return ", ".join(f"{level} {'no cap' if value is None else value}" for level, value in default.items())
    if isinstance(default, tuple):
        return ", ".join(default)
    return f"`{default}`"


def options_table() -> str:
    """Every request option as a Markdown table: name, command-line flag, values, default, meaning."""
    from longshap.hierarchy.options import OPTIONS

    lines = ["| option | flag | values | default | meaning |", "|---|---|---|---|---|"]
    for option in OPTIONS.values():
        cells = (f"`{option.name}`", f"`{option.cli_flag}`", _values(option), _default(option), option.help)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


@event_priority(100)  # before mkdocstrings reads its `paths`, which must exist by then
def on_config(config: Any) -> Any:
    link_sources()
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_table())
    return markdown
