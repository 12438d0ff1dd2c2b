"""Fast start (issue 27): ``import modeling_mel`` and ``mel [<command>] --help`` import neither torch nor transformers,
and the Auto classes and the pipeline are still registered for whoever loads transformers after (or before) the
package: the post-import registration of :mod:`modeling_mel.registry`. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "faiss", "fastapi", "uvicorn", "modeling_mel.pipeline_entity_linking",
         "modeling_mel.entity_index", "modeling_mel.serving")


def run_python(code: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_import_and_help_load_nothing_heavy():
    out = run_python(f"""
import contextlib, io, json, sys
import modeling_mel
after_import = [m for m in {HEAVY!r} if m in sys.modules]
from modeling_mel.cli import COMMANDS, main
with contextlib.redirect_stdout(io.StringIO()) as buf:
    main(["--help"])
    for name in ("link", "index", "serve", "calibrate", "build-dataset"):
        try:
            main([name, "--help"])
        except SystemExit as e:
            assert e.code == 0, (name, e.code)
help_text = buf.getvalue()
print(json.dumps({{"after_import": after_import, "after_help": [m for m in {HEAVY!r} if m in sys.modules],
                  "help_has_device": "--device" in help_text, "commands": len(COMMANDS)}}))
""")
    assert out["after_import"] == [] and out["after_help"] == []
    assert out["help_has_device"] and out["commands"] >= 14


@pytest.fixture(scope="module")
def saved_zemel(tmp_path_factory) -> str:
    from inference_fixtures import tiny_zemel

    path = tmp_path_factory.mktemp("zemel")
    model, processor = tiny_zemel()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


LOAD_WITH_AUTO = """
from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY
model = AutoModel.from_pretrained(PATH)
out = {"config": type(AutoConfig.from_pretrained(PATH)).__name__, "model": type(model).__name__,
       "processor": type(AutoProcessor.from_pretrained(PATH)).__name__,
       "pipeline": "multimodal-entity-linking" in PIPELINE_REGISTRY.supported_tasks,
       "auto_class": type(model)._auto_class}
"""


@pytest.mark.parametrize("order", ["package_first", "transformers_first", "class_first"])
def test_auto_classes_and_pipeline_registered_in_any_import_order(saved_zemel, order):
    before = {
        "package_first": "import modeling_mel\n",
        "transformers_first": "from transformers import AutoModel, pipeline\nimport modeling_mel\n",
        "class_first": "from modeling_mel import ZemelPolyEncoder\n",
    }[order]
    out = run_python(f"import json\nPATH = {saved_zemel!r}\n{before}{LOAD_WITH_AUTO}\nprint(json.dumps(out))")
    assert out == {"config": "ZemelConfig", "model": "ZemelPolyEncoder", "processor": "ZemelProcessor",
                   "pipeline": True, "auto_class": "AutoModel"}


def test_a_saved_model_carries_auto_map_without_touching_the_auto_classes(tmp_path):
    # the classes are marked for Hub-style saving as soon as their module loads
    out = run_python(f"""
import json, sys
from modeling_mel import ZemelConfig, ZemelPolyEncoder
cfg = ZemelConfig(text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=128), v_feature_dim=8, v_hidden_size=24,
                  v_num_attention_heads=4, v_intermediate_size=30, v_num_hidden_layers=1, bi_hidden_size=32,
                  bi_num_attention_heads=4, poly_m=4, max_regions=3)
ZemelPolyEncoder(cfg).save_pretrained({str(tmp_path)!r})
print(json.dumps(json.load(open({str(tmp_path / "config.json")!r}))["auto_map"]))
""")
    assert out["AutoModel"].endswith("ZemelPolyEncoder") and out["AutoConfig"].endswith("ZemelConfig")
