"""Issue 13 point 6: training data and the pipeline build PFMEL's entity side (sentence B and entity image) alike."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import pytest
from transformers import pipeline

from inference_fixtures import register_all, tiny_extractor, tiny_nsp, write_images
from modeling_mel.pfmel_data import PFMELCorpus
from modeling_mel.pipeline_entity_linking import TASK

register_all()

KEYS = ("entity_id", "name", "screen_name", "location", "description", "images", "timeline")
ROWS = [
    # a Twitter user with a timeline whose images differ from its profile images: the timeline's are the paper's
    {"entity_id": "u_full", "name": "Taylor Swift", "screen_name": "taylorswift13", "location": "Nashville",
     "description": "singer", "images": ["img/blue.png"],
     "timeline": [{"tweet_id": "3", "text": "new album", "image": "img/red.png"},
                  {"tweet_id": "4", "text": "tour dates", "image": "img/green.png"}]},
    # a timeline but no screen name: still a Twitter user (training's old rule, the pipeline used the generic prompt)
    {"entity_id": "u_timeline_only", "name": "Taylor Lautner", "screen_name": None, "location": None,
     "description": "actor", "images": ["img/green.png"], "timeline": [{"tweet_id": "5", "text": "on set today", "image": None}]},
    # a screen name, no timeline, profile images only
    {"entity_id": "u_screen_only", "name": "Justin Bieber", "screen_name": "justinbieber", "location": "",
     "description": "pop", "images": ["img/red.png", "img/blue.png"], "timeline": []},
    # a Twitter user with an empty name: the name reads as the screen name in both
    {"entity_id": "u_no_name", "name": "", "screen_name": "anon_user", "location": "Paris", "description": None,
     "images": [], "timeline": [{"tweet_id": "6", "text": "hello", "image": None}]},
    # not a Twitter user: generic "<name>. <description>" and the mean of its images
    {"entity_id": "w_generic", "name": "Taylor Swift (album)", "screen_name": None, "location": None,
     "description": "debut album", "images": ["img/green.png", "img/corrupt.png"], "timeline": []},
    # not a Twitter user, no description, no image
    {"entity_id": "w_bare", "name": "Taylor", "screen_name": None, "location": None, "description": None,
     "images": [], "timeline": []},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from datasets import Dataset, DatasetDict

    root = str(tmp_path_factory.mktemp("parity"))
    write_images(root)
    with open(os.path.join(root, "kb.jsonl"), "w", encoding="utf-8") as f:
        for row in ROWS:
            f.write(json.dumps(row) + "\n")

    def absolute(row):
        row = {k: row.get(k) for k in KEYS}
        row["images"] = [os.path.join(root, p) for p in row["images"]]
        row["timeline"] = [dict(t, image=os.path.join(root, t["image"]) if t.get("image") else None) for t in row["timeline"]]
        return row

    kb = Dataset.from_list([absolute(r) for r in ROWS])
    mentions = DatasetDict({"dev": Dataset.from_list(
        [{"id": "m0", "text": "taylor on stage", "mention": "taylor", "entity_id": "u_full", "image": None}]
    )})
    extractor = tiny_extractor()
    corpus = PFMELCorpus(mentions, kb, image_features="resnet50", extractor=extractor, feature_dim=extractor.feature_dim)
    model, processor = tiny_nsp()
    pipe = pipeline(TASK, model=model, processor=processor, kb=os.path.join(root, "kb.jsonl"), image_extractor=extractor)
    return corpus, pipe


@pytest.mark.parametrize("position", range(len(ROWS)))
def test_pipeline_entity_side_equals_training_data(setup, position):
    corpus, pipe = setup
    eid = ROWS[position]["entity_id"]
    assert pipe.kb.entities[position]["entity_id"] == eid
    assert pipe._entity_side(position) == corpus.entity_text(eid)
    corpus.ensure_entity_features([eid])
    trained = corpus.table.array[corpus.table.row(f"entity:{eid}")]
    served = pipe._entity_feature(position)
    if not np.abs(trained).sum():
        assert served is None  # no readable image: a zero row in training, no image token in the pipeline
    else:
        assert served is not None and np.allclose(served.numpy(), trained, atol=1e-5)


def test_the_kinds_of_rows_give_the_expected_templates(setup):
    corpus, _ = setup
    assert corpus.entity_text("u_full").startswith("@taylorswift13. the username of @taylorswift13")
    assert corpus.entity_text("u_timeline_only").startswith("@u_timeline_only. the username of")
    assert " is anon_user and " in corpus.entity_text("u_no_name")
    assert corpus.entity_text("w_generic") == "Taylor Swift (album). debut album"
    assert corpus.entity_text("w_bare") == "Taylor. NA"
    # the timeline's images (red, green) are the entity image of a Twitter user, not its profile image (blue)
    corpus.ensure_entity_features(["u_full"])
    timeline = [t["image"] for t in corpus.entities["u_full"]["timeline"]]
    expected = np.asarray(corpus.extractor.encode(timeline)).mean(0)
    assert np.allclose(corpus.table.array[corpus.table.row("entity:u_full")], expected, atol=1e-5)


def test_pipeline_normalises_image_features_as_training(setup):
    # one normalisation: the processor's settings (written by training) applied by the pipeline equal FeatureTable's
    from modeling_mel.pfmel_data import FeatureTable

    corpus, pipe = setup
    rng = np.random.default_rng(0)
    rows = rng.random((3, corpus.table.dim)).astype(np.float32)
    rows[1] = 0.0  # no image: stays zero
    mean = rng.random(corpus.table.dim).astype(np.float32)
    pipe.processor.feature_norm, pipe.processor.feature_mean = "center_l2", mean.tolist()
    try:
        table = FeatureTable(corpus.table.dim, l2=True, center=mean)
        keys = [table.add(f"k{i}", r) for i, r in enumerate(rows)]
        expected = table.normalized(keys)
        served = np.stack([pipe._pfmel_normalize(torch.from_numpy(r)).numpy() for r in rows])
        np.testing.assert_allclose(served, expected, atol=1e-6)
        assert not served[1].any() and np.allclose(np.linalg.norm(served[[0, 2]], axis=1), 1.0)
    finally:
        pipe.processor.feature_norm, pipe.processor.feature_mean = None, None
