"""The prepared-clip dataset format (what prepare-data writes and the training stages read)."""

import json

import numpy as np
import pytest

from rain.training.data import ClipStore, DatasetError, Manifest, ShardWriter, write_synthetic_dataset


def test_synthetic_dataset_round_trip(tmp_path):
    manifest = write_synthetic_dataset(tmp_path, clips=5, clip_length=8, size=(32, 48), clips_per_shard=2)
    assert manifest.clips == 5 and manifest.frames == 40 and len(manifest.shards) == 3
    store = ClipStore(tmp_path)
    assert len(store) == 5 and store.size == (32, 48) and store.clip_length == 8
    frames, condition = store.read(4)
    assert frames.shape == condition.shape == (8, 32, 48, 3) and frames.dtype == np.uint8
    part, _ = store.read(4, 2, 3)
    assert np.array_equal(part, frames[2:5])
    picked, picked_condition = store.read(4, frames=[7, 0])
    assert np.array_equal(picked, frames[[7, 0]]) and np.array_equal(picked_condition, condition[[7, 0]])
    # The disc moves and the condition marks it: consecutive frames differ, conditions are sparse dots.
    assert not np.array_equal(frames[0], frames[-1])
    assert 0 < (condition.sum(-1) > 0).mean() < 0.2


def test_writer_refuses_clips_of_the_wrong_shape(tmp_path):
    writer = ShardWriter(tmp_path, Manifest(task="face", size=(16, 16), clip_length=4))
    with pytest.raises(ValueError, match="uint8"):
        writer.add(np.zeros((4, 16, 16, 3), np.float32), np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[4, 16, 16, 3\]"):
        writer.add(np.zeros((3, 16, 16, 3), np.uint8), np.zeros((3, 16, 16, 3), np.uint8))


def test_missing_or_foreign_dataset_is_explained(tmp_path):
    with pytest.raises(DatasetError, match="prepare-data"):
        ClipStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other", "version": 3}))
    with pytest.raises(DatasetError, match="not a rain-clips v1 manifest"):
        ClipStore(tmp_path)
    write_synthetic_dataset(tmp_path / "d", clips=2, clip_length=4, size=(16, 16))
    (tmp_path / "d" / "shards" / "00000.safetensors").unlink()
    with pytest.raises(DatasetError, match="missing"):
        ClipStore(tmp_path / "d")
