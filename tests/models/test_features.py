"""Teacher feature cache: round trip, lookup, errors, shard merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leadercli.errors import ArtifactError, ModelError
from leadercli.models.features import (
    FeatureCache,
    check_backbone,
    feature_metadata,
    load_features,
    merge_feature_shards,
    save_features,
)

BACKBONE = {"name": "tiny-llama", "config_hash": "0123456789abcdef", "hidden_size": 4, "model_type": "llama"}


def feats(n: int, d: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3  # (n, d)


def test_round_trip_fp16(tmp_path: Path) -> None:
    f = feats(5)
    path = save_features(
        tmp_path / "f.safetensors",
        [30, 10, 20, 50, 40],
        [3, 1, 2, 5, 4],
        f,
        feature_metadata(BACKBONE, split="train"),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors"]  # no temp file left
    sids, hids, back, meta = load_features(path)
    assert sids.tolist() == [30, 10, 20, 50, 40] and hids.tolist() == [3, 1, 2, 5, 4]
    assert back.dtype == torch.float32 and back.shape == (5, 4)
    torch.testing.assert_close(back, f, rtol=1e-3, atol=2e-3)  # fp16 storage
    assert meta["backbone"] == "tiny-llama" and meta["config_hash"] == "0123456789abcdef"
    assert (
        meta["hidden_size"] == "4"
        and meta["n"] == "5"
        and meta["split"] == "train"
        and meta["dtype"] == "float16"
    )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert fh.get_tensor("features").dtype == torch.float16


def test_values_beyond_fp16_are_kept_in_fp32(tmp_path: Path) -> None:
    f = torch.tensor([[1e5, -2.0, 0.5, 7.0]])
    save_features(tmp_path / "big.safetensors", [1], [1], f, feature_metadata(BACKBONE))
    _, _, back, meta = load_features(tmp_path / "big.safetensors")
    assert meta["dtype"] == "float32" and torch.equal(back, f)


def test_nan_features_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="NaN or inf"):
        save_features(
            tmp_path / "x.safetensors",
            [1],
            [1],
            torch.tensor([[float("nan"), 0, 0, 0]]),
            feature_metadata(BACKBONE),
        )


def test_lookup_in_request_order_and_missing_ids(tmp_path: Path) -> None:
    f = feats(3)
    save_features(tmp_path / "f.safetensors", [7, 8, 9], [70, 80, 90], f, feature_metadata(BACKBONE))
    cache = FeatureCache.load(tmp_path / "f.safetensors")
    assert len(cache) == 3 and cache.dim == 4 and cache.covers([9, 7]) and not cache.covers([1])
    got = cache.lookup(torch.tensor([9, 7, 9]))
    torch.testing.assert_close(got, f[[2, 0, 2]], rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(cache.lookup([8], hadm_ids=[80]), f[[1]], rtol=1e-3, atol=2e-3)
    with pytest.raises(ArtifactError, match="lacks 2 of 4 requested samples"):
        cache.lookup([7, 1, 2, 9])
    with pytest.raises(ArtifactError, match="lacks 1 of 1"):
        cache.lookup([8], hadm_ids=[81])


def test_per_visit_cache_needs_hadm_ids(tmp_path: Path) -> None:
    save_features(tmp_path / "f.safetensors", [7, 7, 8], [70, 71, 80], feats(3), feature_metadata(BACKBONE))
    cache = FeatureCache.load(tmp_path / "f.safetensors")
    with pytest.raises(ArtifactError, match="several samples for 1 of 2"):
        cache.lookup([7, 8])
    assert cache.lookup([7, 7], hadm_ids=[71, 70]).shape == (2, 4)


def test_check_backbone(tmp_path: Path) -> None:
    save_features(tmp_path / "f.safetensors", [1], [1], feats(1), feature_metadata(BACKBONE, template="v1"))
    meta = load_features(tmp_path / "f.safetensors")[3]
    check_backbone(meta, BACKBONE, also={"template": "v1"})
    with pytest.raises(
        ModelError, match="have hidden size 4 but backbone minilm has hidden size 384"
    ) as info:
        check_backbone(meta, {"name": "minilm", "config_hash": "x", "hidden_size": 384}, path="f.safetensors")
    assert "\n" not in info.value.one_line()
    with pytest.raises(ModelError, match="made with backbone tiny-llama .* but the teacher is other"):
        check_backbone(meta, {**BACKBONE, "name": "other"})
    with pytest.raises(ModelError, match="config 0123456789abcdef.*config ffff"):
        check_backbone(meta, {**BACKBONE, "config_hash": "ffff"})
    with pytest.raises(ModelError, match="have template v1 but this run has v2"):
        check_backbone(meta, BACKBONE, also={"template": "v2"})


def test_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_features(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ArtifactError, match="is not a teacher feature cache"):
        load_features(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_features(tmp_path / "junk.safetensors")


def test_merge_shards_sorted_and_deduplicated(tmp_path: Path) -> None:
    f = feats(6)
    # rank 0 got subjects 5, 1, 3; rank 1 got 4, 2 and a padding repeat of 5 (DistributedSampler)
    a = save_features(
        tmp_path / "r0.safetensors",
        [5, 1, 3],
        [50, 10, 30],
        f[:3],
        feature_metadata(BACKBONE, rank=0, world_size=2),
    )
    b = save_features(
        tmp_path / "r1.safetensors",
        [4, 2, 5],
        [40, 20, 50],
        f[3:],
        feature_metadata(BACKBONE, rank=1, world_size=2),
    )
    out = merge_feature_shards([a, b], tmp_path / "train.safetensors")
    sids, hids, back, meta = load_features(out)
    assert sids.tolist() == [1, 2, 3, 4, 5] and hids.tolist() == [10, 20, 30, 40, 50]
    torch.testing.assert_close(back, f[[1, 4, 2, 3, 0]], rtol=1e-3, atol=2e-3)  # subject 5: rank 0's copy
    assert "rank" not in meta and meta["n"] == "5" and meta["backbone"] == "tiny-llama"


def test_merge_refuses_mixed_backbones(tmp_path: Path) -> None:
    a = save_features(tmp_path / "r0.safetensors", [1], [1], feats(1), feature_metadata(BACKBONE))
    b = save_features(
        tmp_path / "r1.safetensors", [2], [2], feats(1), feature_metadata({**BACKBONE, "config_hash": "ffff"})
    )
    with pytest.raises(ArtifactError, match="r1.safetensors differs from .* in config_hash"):
        merge_feature_shards([a, b], tmp_path / "out.safetensors")
