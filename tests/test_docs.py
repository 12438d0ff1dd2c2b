"""The README is a front page and the docs cannot rot: every ``mel`` command shown in README.md or docs/*.md names a
real subcommand and only options that subcommand's parser has; every docs link resolves."""

from __future__ import annotations

import glob
import os
import re
import shlex

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO_ROOT, "README.md"), *sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))]


def code_lines(path: str) -> list[str]:
    """The lines of the fenced code blocks of ``path``, continuation lines (``\\``) joined."""
    out, fence, pending = [], False, ""
    with open(path, encoding="utf-8") as f:
        for line in f.read().splitlines():
            if line.startswith("```"):
                fence = not fence
                continue
            if not fence:
                continue
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append(pending + line)
            pending = ""
    return out


def mel_commands() -> list[tuple[str, str, list[str]]]:
    """``(page, subcommand, options)`` of every ``mel <subcommand> ...`` line in a code block."""
    found = []
    for page in PAGES:
        for line in code_lines(page):
            text = line.split(" #")[0].strip()
            if not text.startswith("mel "):
                continue
            try:
                tokens = shlex.split(text)
            except ValueError:
                tokens = text.split()
            if len(tokens) < 2 or tokens[1].startswith("-"):
                continue
            options = [t.split("=")[0] for t in tokens[2:] if t.startswith("--")]
            found.append((os.path.relpath(page, REPO_ROOT), tokens[1], options))
    return found


def test_readme_is_a_front_page():
    with open(PAGES[0], encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 250
    assert lines[1].startswith("make demo") and lines[2].startswith("make test")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_links_resolve(page):
    with open(page, encoding="utf-8") as f:
        text = f.read()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert os.path.exists(os.path.join(os.path.dirname(page), target)), f"{page}: broken link {target}"


def test_every_documented_mel_command_exists_with_its_options(capsys):
    from modeling_mel.cli import COMMANDS, resolve_command

    commands = mel_commands()
    assert len(commands) >= 20  # the pages do show the commands
    helps: dict[str, str] = {}
    problems = []
    for page, name, options in commands:
        if name not in COMMANDS:
            problems.append(f"{page}: mel {name}: no such subcommand")
            continue
        if name not in helps:
            with pytest.raises(SystemExit) as exit_info:
                resolve_command(COMMANDS[name][1])(["--help"])
            assert exit_info.value.code in (0, None)
            helps[name] = capsys.readouterr().out
        problems += [f"{page}: mel {name}: unknown option {o}" for o in options
                     if not re.search(re.escape(o) + r"\b", helps[name])]
    assert problems == []
