"""The modules of modeling_mel form no import cycle (issue 14), counting imports inside functions too, and each one
imports alone in a fresh interpreter (slow: one interpreter per module)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modeling_mel")
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py")


def imports_of(module: str) -> set[str]:
    """The modeling_mel modules ``module`` imports anywhere in its file (relative or absolute, at any depth)."""
    with open(os.path.join(PACKAGE, module + ".py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.module and node.module.split(".")[0] == "modeling_mel":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("modeling_mel."))
    return found & set(MODULES) - {module}


def test_no_two_modules_import_each_other():
    graph = {m: imports_of(m) for m in MODULES}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted({tuple(sorted((a, b))) for a in MODULES for b in reachable(a) if a != b and a in reachable(b)})
    assert cycles == []
    # the KB layer is below both the pipeline and the entity index
    assert "pipeline_entity_linking" not in reachable("entity_index")
    assert graph["knowledge_base"] == set()


def test_the_graph_reader_sees_function_level_imports():
    # the check above would miss cycles if it could not see lazy imports: the pipeline's are found
    assert {"entity_index", "knowledge_base", "image_features"} <= imports_of("pipeline_entity_linking")


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    def load(module: str) -> tuple[str, int, str]:
        run = subprocess.run([sys.executable, "-c", f"import modeling_mel.{module}"], capture_output=True, text=True,
                             env=env, timeout=300)
        return module, run.returncode, run.stderr[-1000:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [(m, err) for m, code, err in pool.map(load, MODULES) if code != 0]
    assert failures == []
