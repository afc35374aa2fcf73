"""MkDocs hook: the parts of pages that are generated from the code, so that they cannot drift.

A page says where with a line ``<!-- generated: NAME -->``, which the hook replaces:

- ``components`` (``reference/components.md``): every built-in component class of the
  engine's component modules, with its signature (a table, from :mod:`inspect`) and its
  docstring and arguments (mkdocstrings ``:::`` blocks, from the source);
- ``cli`` (``reference/cli.md``): every ``mei`` command and option, the ``--help`` of each
  command of the argument parser in :mod:`mei.cli`.

They are made at every ``mkdocs build``/``serve``; nothing generated is written to ``docs/``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
from contextlib import contextmanager
from typing import Any

# (module, what its components are for): the config's slots, in the order of a step
COMPONENT_MODULES = [
    ("mei.initial", "`initial`: where the optimization starts"),
    ("mei.parameterization", "`parameterization`: what the optimizer changes"),
    ("mei.transforms", "`transform`: what the model sees"),
    ("mei.regularization", "`regularization`: subtracted from the model's response"),
    ("mei.preconditioning", "`precondition`: applied to the gradient"),
    ("mei.postprocessing", "`postprocessing`: applied to the input after each step"),
    ("mei.stoppers", "`stopper`: when to stop"),
    ("mei.objectives", "`objectives`: what is tracked"),
    ("mei.modules", "`response` and the models' wrappers"),
    ("mei.legacy.ops", "the original library's operations (`mei.legacy.ops.*` paths)"),
]


def component_classes(module_name: str) -> list[type]:
    """The public classes defined in ``module_name`` (not imported into it), in source order."""
    module = importlib.import_module(module_name)
    classes = [
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module_name and not name.startswith("_")
    ]
    return sorted(classes, key=lambda cls: inspect.getsourcelines(cls)[1])


def _arguments(cls: type) -> str:
    """The arguments a config's kwargs fill, with their defaults (the types are in the entry)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return "(...)"
    shown = []
    for parameter in parameters:
        text = parameter.name
        if parameter.kind is parameter.VAR_POSITIONAL:
            text = "*" + text
        elif parameter.kind is parameter.VAR_KEYWORD:
            text = "**" + text
        elif parameter.default is not parameter.empty:
            text += f"={parameter.default!r}"
        shown.append(text)
    return "(" + ", ".join(shown) + ")"


ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):`~?([^`]+)`")


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return ROLE.sub(r"`\1`", first).replace("|", "\\|")


def components_page() -> str:
    lines = []
    for module_name, purpose in COMPONENT_MODULES:
        lines += [f"- [`{module_name}`](#{module_name.replace('.', '')}): {purpose}"]
    lines.append("")
    for module_name, purpose in COMPONENT_MODULES:
        classes = component_classes(module_name)
        lines += [
            f"## `{module_name}` {{#{module_name.replace('.', '')}}}",
            "",
            purpose[0].upper() + purpose[1:] + ".",
            "",
            "| path | arguments | what it does |",
            "| --- | --- | --- |",
        ]
        for cls in classes:
            lines.append(
                f"| [`{module_name}.{cls.__name__}`](#{module_name}.{cls.__name__}) "
                f"| `{_arguments(cls)}` | {_summary(cls)} |"
            )
        lines += [
            "",
            f"::: {module_name}",
            "    options:",
            "      show_root_heading: false",
            "      show_root_toc_entry: false",
            "      heading_level: 3",
            "      members:",
        ]
        lines += [f"        - {cls.__name__}" for cls in classes]
        lines.append("")
    return "\n".join(lines)


@contextmanager
def _help_environment():
    """Help texts as a reader's machine shows them: 80 columns (the page's width), a neutral data directory."""
    saved = {name: os.environ.get(name) for name in ("COLUMNS", "MEI_DATA_DIR")}
    os.environ["COLUMNS"] = "80"
    os.environ["MEI_DATA_DIR"] = "~/.local/share/mei"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:  # argparse has no public way to list sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices.items())
    return found


def cli_page() -> str:
    from mei.cli import build_parser

    with _help_environment():
        parser = build_parser()
        lines = [
            "## `mei`",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]

        def describe(prefix: str, sub: argparse.ArgumentParser, level: int) -> None:
            lines.extend(
                [
                    f"{'#' * level} `{prefix}`",
                    "",
                    "```text",
                    sub.format_help().rstrip(),
                    "```",
                    "",
                ]
            )
            for name, nested in _subcommands(sub):
                describe(f"{prefix} {name}", nested, level + 1)

        for name, sub in _subcommands(parser):
            describe(f"mei {name}", sub, 2)
    return "\n".join(lines)


GENERATED = {
    "components": components_page,
    "cli": cli_page,
}
MARKER = re.compile(r"^<!-- generated: ([a-z]+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATED:
            raise ValueError(f"{page.file.src_uri}: no generated part named {name!r}")
        return GENERATED[name]()

    return MARKER.sub(generate, markdown)


# docstrings use Sphinx roles (:class:`~mei.x.Y`), which Markdown shows as text before the code
HTML_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):(<code>)~?")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return HTML_ROLE.sub(r"\1", html)
