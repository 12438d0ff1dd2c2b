"""PFMEL's image feature table (rows, normalisation, gathering per batch) and the precomputed feature maps. How the
corpus fills the table: tests/test_pfmel_data.py."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_mel.pfmel_features import FeatureTable, load_precomputed_features, save_precomputed_features


def test_rows_are_stored_once_and_row_0_is_no_image():
    table = FeatureTable(3)
    assert len(table) == 1 and table.row("mention:absent") == 0 and not table.array[0].any()
    assert table.add("mention:a", [3.0, 4.0, 0.0]) == 1
    assert table.add("entity:e", np.array([[1.0], [2.0], [2.0]])) == 2  # any shape of dim values
    assert table.add("mention:a", [9.0, 9.0, 9.0]) == 1  # an existing key keeps its row and its vector
    assert len(table) == 3 and table.row("entity:e") == 2
    np.testing.assert_array_equal(table.array, [[0, 0, 0], [3, 4, 0], [1, 2, 2]])
    assert table.array.dtype == np.float32
    with pytest.raises(ValueError, match="has size 2; this table holds 3-d features"):
        table.add("mention:b", [1.0, 2.0])


def test_normalisation_centre_then_unit_norm_and_no_image_stays_zero():
    raw = FeatureTable(2)
    raw.add("a", [3.0, 4.0])
    raw.add("b", [1.0, 0.0])
    np.testing.assert_allclose(raw.normalized([1, 2, 0]), [[3, 4], [1, 0], [0, 0]])  # l2=False, no centre: raw
    np.testing.assert_allclose(raw.nonzero_mean(), [2.0, 2.0])  # the zero row (no image) is left out
    unit = FeatureTable(2, l2=True)
    unit.add("a", [3.0, 4.0])
    np.testing.assert_allclose(unit.normalized([1, 0]), [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)
    centred = FeatureTable(2, l2=True, center=np.array([3.0, 0.0]))
    centred.add("a", [3.0, 4.0])
    centred.add("b", [6.0, 4.0])
    np.testing.assert_allclose(centred.normalized([1, 2, 0]), [[0, 1], [0.6, 0.8], [0, 0]], atol=1e-6)


def test_gather_pads_each_example_to_the_batch_s_most_images():
    table = FeatureTable(2, l2=True)
    table.add("a", [0.0, 2.0])
    table.add("b", [5.0, 0.0])
    out = table.gather([[1, 2], [2], []])
    assert tuple(out.shape) == (3, 2, 2) and str(out.dtype) == "torch.float32"
    np.testing.assert_allclose(out.numpy(), [[[0, 1], [1, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]], atol=1e-6)
    assert tuple(table.gather([[], []]).shape) == (2, 0, 2)


def test_precomputed_features_roundtrip(tmp_path):
    mentions = {"m1": np.arange(4, dtype=np.float32), "m2": np.ones((2, 2), np.float64)}
    entities = {"E1": [0.5, 0.25, 0.0, 1.0]}
    for suffix in ("safetensors", "npz"):
        path = str(tmp_path / f"f.{suffix}")
        save_precomputed_features(path, mentions, entities)
        loaded = load_precomputed_features(path)
        assert set(loaded) == {"mention:m1", "mention:m2", "entity:E1"}
        assert all(v.dtype == np.float32 and v.shape == (4,) for v in loaded.values())  # float32 vectors
        np.testing.assert_array_equal(loaded["mention:m1"], [0, 1, 2, 3])
        np.testing.assert_array_equal(loaded["mention:m2"], [1, 1, 1, 1])
        np.testing.assert_array_equal(loaded["entity:E1"], [0.5, 0.25, 0.0, 1.0])
    with pytest.raises(ValueError, match="must end with .safetensors or .npz"):
        save_precomputed_features(str(tmp_path / "f.pt"), mentions, entities)
    (tmp_path / "f.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="must end with .safetensors or .npz"):
        load_precomputed_features(str(tmp_path / "f.pt"))
    with pytest.raises(ValueError, match="does not exist"):
        load_precomputed_features(str(tmp_path / "nope.npz"))
