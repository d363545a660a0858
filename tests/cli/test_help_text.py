"""Every ``chada ... --help`` is written for users: no developer docstring (reST markup, private names)."""

from __future__ import annotations

import argparse

from chada.cli import build_parser

# Sphinx roles and private helper names belong to the code's docs; ``literal`` quoting alone is allowed
# (several commands' descriptions are user-facing docstrings that quote options that way).
DEVELOPER_MARKS = (":data:", ":func:", ":class:", ":mod:", "_add_", "_run_", "Structure:")


def _parsers(
    parser: argparse.ArgumentParser, name: str = "chada"
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _parsers(sub, f"{name} {sub_name}")
    return out


def test_no_help_shows_a_developer_docstring():
    bad = {}
    for name, parser in _parsers(build_parser()):
        text = parser.format_help()
        marks = [m for m in DEVELOPER_MARKS if m in text]
        if marks:
            bad[name] = marks
    assert not bad, f"--help text with developer markup: {bad}"


def test_the_check_sees_a_docstring_as_description():
    parser = argparse.ArgumentParser(prog="x", description="``x``: see :data:`Y`, one ``_add_NAME`` each")
    assert [m for m in DEVELOPER_MARKS if m in parser.format_help()] == [":data:", "_add_"]
