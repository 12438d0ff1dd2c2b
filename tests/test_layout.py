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
