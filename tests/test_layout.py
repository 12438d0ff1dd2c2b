"""Tests follow the package (issue 26): every module of ``modeling_mel/``, ``modeling_mel/builders/`` and
``modeling_mel/scripts/`` has its test file ``tests/test_<module>.py`` (more may exist: tests of behaviour across
modules keep their own names)."""

from __future__ import annotations

import os

TESTS = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(os.path.dirname(TESTS), "modeling_mel")
FOLDERS = ("", "builders", "scripts")


def package_modules() -> list[str]:
    """``modeling_mel/<folder>/<module>.py`` of every module of the package's folders, ``__init__.py`` aside."""
    return sorted(
        os.path.join("modeling_mel", folder, name)
        for folder in FOLDERS
        for name in os.listdir(os.path.join(PACKAGE, folder))
        if name.endswith(".py") and name != "__init__.py"
    )


def test_every_module_has_its_test_file():
    modules = package_modules()
    assert len(modules) > 40 and "modeling_mel/scripts/train_zemel.py" in modules  # the listing sees all three folders
    missing = [f"{path} -> tests/test_{os.path.basename(path)}" for path in modules
               if not os.path.isfile(os.path.join(TESTS, "test_" + os.path.basename(path)))]
    assert not missing, "modules without their test file:\n  " + "\n  ".join(missing)


def test_module_names_do_not_collide_across_folders():
    # one tests/ folder for the three package folders: two modules of the same name would share one test file
    names = [os.path.basename(path) for path in package_modules()]
    assert sorted(set(names)) == sorted(names), sorted({n for n in names if names.count(n) > 1})


MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 100


def test_no_module_over_800_lines_and_no_function_over_100():
    """Issue 26: modules stay readable (at most 800 lines) and so do functions (at most 100, docstring included)."""
    import ast

    long_modules, long_functions = [], []
    for path in package_modules():
        with open(os.path.join(os.path.dirname(TESTS), path), encoding="utf-8") as f:
            text = f.read()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path}::{node.name}: {length} lines")
    assert not long_modules, "modules over 800 lines:\n  " + "\n  ".join(long_modules)
    assert not long_functions, "functions over 100 lines:\n  " + "\n  ".join(long_functions)
