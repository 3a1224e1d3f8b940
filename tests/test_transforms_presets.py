"""denoise_transforms / classify_transforms: shapes, seeding, caching, and inversion back to the scan's own space."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, PersistentDataset
from monai.transforms import Compose, Invertd

from transforms.intensity import percentile_stats
from transforms.presets import classify_transforms, denoise_transforms, fresh_noise

# Non-RAS orientation (axes permuted, two flipped) and anisotropic voxels.
AFFINE = np.array([[0.0, 0.0, -1.5, 40.0], [-1.0, 0.0, 0.0, 20.0], [0.0, 2.0, 0.0, -30.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (30, 26, 22)


def phantom(seed: int = 0) -> np.ndarray:
    """Smooth head: an ellipsoid of grey/white-like intensities on a zero background."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    r = np.sqrt((grid[0] / 0.8) ** 2 + (grid[1] / 0.75) ** 2 + (grid[2] / 0.7) ** 2)
    rng = np.random.default_rng(seed)
    tissue = 60 + 40 * np.cos(3 * grid[0] + rng.uniform(0, 1)) * np.sin(2 * grid[1])
    return np.where(r < 1, tissue + 40, 0.0).astype(np.float32)


@pytest.fixture
def scans(tmp_path):
    clean = phantom()
    noisy = np.abs(clean + np.random.default_rng(1).normal(0, 6, SHAPE)).astype(np.float32)  # magnitude image
    paths = {}
    for name, data in [("clean", clean), ("noisy", noisy)]:
        paths[name] = tmp_path / f"sub-01_{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, AFFINE), paths[name])
    return paths, clean, noisy


@pytest.mark.parametrize("spacing", [None, (1.5, 1.5, 1.5)])
def test_infer_preprocessing_inverts_back_to_the_scans_own_space(scans, spacing):
    paths, _, noisy = scans
    pre = denoise_transforms("infer", spacing=spacing, divisible_k=16)
    data = pre({"image": str(paths["noisy"])})
    img = data["image"]
    assert all(s % 16 == 0 for s in img.shape[1:])
    rotation = img.affine[:3, :3].numpy()
    assert np.allclose(rotation, np.diag(np.diag(rotation))) and (np.diag(rotation) > 0).all()  # RAS
    data["pred"] = img.clone()
    back = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert back.shape == (1, *SHAPE)
    np.testing.assert_allclose(back.affine.numpy(), AFFINE, atol=1e-6)
    if spacing is None:  # orientation, scaling and padding invert exactly
        np.testing.assert_allclose(back[0].numpy(), noisy, rtol=1e-5, atol=1e-4)
    else:  # resampling twice blurs, but the intensities come back in the scan's own units
        err = np.abs(back[0].numpy() - noisy)
        assert np.median(err) < 0.1 * noisy.max() and abs(back.mean() - noisy.mean()) < 0.05 * noisy.mean()


def test_infer_scaling_uses_the_inputs_own_statistic(scans):
    paths, _, noisy = scans
    img = denoise_transforms("infer")({"image": str(paths["noisy"])})["image"]
    width = percentile_stats(noisy[None], lower=None, upper=99.5)[1][0]
    assert img.meta["scale_percentile"]["widths"] == pytest.approx([width], rel=1e-5)
    assert float(img.min()) >= 0 and float(img.max()) > 1  # no offset, no clipping


@pytest.mark.parametrize("noise", ["gaussian", "poisson", "rician", "lowdose"])
def test_train_synthetic_gives_mask_weighted_patches_with_clean_labels(scans, noise):
    paths, _, _ = scans
    level = {"gaussian": (5, 25), "poisson": 100.0, "rician": 15.0, "lowdose": 0.25}[noise]
    chain = denoise_transforms("train", patch_size=16, noise=noise, level=level, num_samples=2, augment=True)
    patches = chain({"image": str(paths["clean"]), "label": "ignored", "subject": "sub-01"})
    assert len(patches) == 2
    for p in patches:
        assert p["image"].shape == p["label"].shape == p["mask"].shape == (1, 16, 16, 16)
        assert p["mask"][0, 8, 8, 8] == 1
        assert not torch.equal(p["image"], p["label"])
        assert p["subject"] == "sub-01"
    again = denoise_transforms("train", patch_size=16, noise=noise, level=level, num_samples=2, augment=True)
    twin = again({"image": str(paths["clean"])})
    assert torch.equal(patches[0]["image"], twin[0]["image"])  # the chain is seeded


def test_val_noise_is_identical_run_to_run_and_changes_with_the_seed(scans):
    paths, clean, _ = scans
    item = {"image": str(paths["clean"])}
    a = denoise_transforms("val", noise="gaussian", level=15, seed=3)(item)
    b = denoise_transforms("val", noise="gaussian", level=15, seed=3)(item)
    c = denoise_transforms("val", noise="gaussian", level=15, seed=4)(item)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert all(s % 16 == 0 for s in a["image"].shape[1:])
    # the residual on the head is the requested noise, in the units of the final (noisy-input) scaling
    ops = a["image"].applied_operations
    first, second = (op["extra_info"]["widths"][0] for op in ops if op["class"] == "ScalePercentile")
    head = a["mask"][0].numpy() > 0
    residual = (a["image"] - a["label"])[0].numpy()[head]
    assert abs(residual.std() - 15 / 255 / second) / (15 / 255 / second) < 0.1
    assert first == pytest.approx(percentile_stats(clean[None], lower=None)[1][0], rel=1e-5)


def test_val_centre_crop_and_paired_scaling(scans):
    paths, _, noisy = scans
    item = {"image": str(paths["noisy"]), "label": str(paths["clean"])}
    out = denoise_transforms("val", paired=True, noise=None, val_roi=(16, 16, 16))(item)
    assert out["image"].shape == out["label"].shape == (1, 16, 16, 16)
    width = percentile_stats(noisy[None], lower=None)[1][0]
    assert out["label"].meta["scale_percentile"]["widths"] == pytest.approx([width], rel=1e-5)


def test_mask_file_is_loaded_on_the_scans_grid(scans, tmp_path):
    paths, clean, _ = scans
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[5:20, 4:18, 3:15] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), tmp_path / "mask.nii.gz")
    item = {"image": str(paths["clean"]), "mask": str(tmp_path / "mask.nii.gz")}
    out = denoise_transforms("val", noise="gaussian", mask_file=True)(item)
    assert out["mask"].shape == out["image"].shape
    assert set(np.unique(out["mask"].numpy())) == {0.0, 1.0} and int(out["mask"].sum()) == int(mask.sum())
    patches = denoise_transforms("train", patch_size=8, noise="gaussian", mask_file=True, num_samples=3)(item)
    assert all(p["mask"][0, 4, 4, 4] == 1 for p in patches)


def test_train_pipeline_caches_in_monai_datasets(scans, tmp_path):
    paths, _, _ = scans
    chain = denoise_transforms("train", patch_size=16, noise="poisson", level=(50, 200), num_samples=2)
    data = [{"image": str(paths["clean"])}, {"image": str(paths["noisy"])}]
    cached = CacheDataset(data, transform=chain, cache_rate=1.0, num_workers=0, progress=False)
    persistent = PersistentDataset(data, transform=chain, cache_dir=tmp_path / "cache")
    for dataset in (cached, persistent):
        batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=0)))
        assert batch["image"].shape == (4, 1, 16, 16, 16)
    assert any((tmp_path / "cache").iterdir())


def _first(out):
    """The first item of a transform chain's output (a list when it cuts several patches)."""
    return out[0] if isinstance(out, list) else out


@pytest.mark.parametrize("stage", ["train", "val", "infer"])
def test_classify_transforms_shape_range_and_label(scans, stage):
    paths, _, _ = scans
    out = classify_transforms(stage, spatial_size=24)({"image": str(paths["clean"]), "label": 1})
    assert out["image"].shape == (1, 24, 24, 24)
    assert float(out["image"].min()) >= 0 and float(out["image"].max()) <= 1
    assert out["label"].dtype == torch.long and int(out["label"]) == 1
    assert "mask" not in out
    unlabeled = classify_transforms(stage, spatial_size=24)({"image": str(paths["clean"])})
    assert "label" not in unlabeled


@pytest.mark.parametrize("stage", ["train", "val", "infer"])
def test_chains_pickle_for_spawned_workers(scans, stage):
    paths, _, _ = scans
    original = denoise_transforms(stage, patch_size=16, noise="rician", level=(5, 15))
    chain = pickle.loads(pickle.dumps(original))
    out = _first(chain.set_random_state(3)({"image": str(paths["clean"])}))
    expected = _first(original.set_random_state(3)({"image": str(paths["clean"])}))
    assert out["image"].ndim == 4
    for key in sorted(set(out) & {"image", "label"}):  # the worker's copy draws what the original draws
        torch.testing.assert_close(out[key].as_tensor(), expected[key].as_tensor())
    classifier = classify_transforms(stage)
    copy = pickle.loads(pickle.dumps(classifier)).set_random_state(3)
    torch.testing.assert_close(
        copy({"image": str(paths["clean"]), "label": 0})["image"].as_tensor(),
        classifier.set_random_state(3)({"image": str(paths["clean"]), "label": 0})["image"].as_tensor(),
    )


def test_preset_validation():
    with pytest.raises(ValueError, match="stage"):
        denoise_transforms("test")
    with pytest.raises(ValueError, match="noise"):
        denoise_transforms("train", noise="salt")
    with pytest.raises(ValueError, match="level"):
        denoise_transforms("val", noise="gaussian", level=400)
    with pytest.raises(ValueError, match="stage"):
        classify_transforms("eval")


def test_fresh_noise_draws_new_noise_on_the_clean_target_at_every_call():
    rng = np.random.default_rng(0)
    clean = torch.as_tensor(rng.uniform(0.2, 1.0, size=(1, 16, 16, 16)).astype(np.float32))
    item = {"image": clean + 0.5, "label": clean}  # a stale noisy input, to be replaced
    steps = Compose(fresh_noise("gaussian15")).set_random_state(3)
    first, second = steps(item), steps(item)
    for out in (first, second):
        residual = (out["image"] - clean).numpy()
        assert abs(residual.mean()) < 0.01  # the input is the clean target plus noise, not the stale one
        assert residual.std() == pytest.approx(15 / 255, rel=0.1)
        assert torch.equal(out["label"], clean)
    assert not torch.equal(first["image"], second["image"])
    ranged = Compose(fresh_noise("rician", level=(20, 40))).set_random_state(0)(item)
    assert (ranged["image"] >= 0).all()  # a magnitude
    assert fresh_noise("") == []
    with pytest.raises(ValueError, match="needs a level"):
        fresh_noise("gaussian")
    with pytest.raises(ValueError, match="noise name"):
        fresh_noise("speckle5")


def test_train_background_share_keeps_the_whole_field_of_view(scans):
    paths, _, _ = scans
    item = {"image": str(paths["clean"])}
    chain = denoise_transforms("train", patch_size=8, num_samples=64, seed=0, background=0.5)
    patches = chain(item)
    outside = np.mean([float(p["mask"][0, 4, 4, 4]) == 0 for p in patches])
    assert 0.25 < outside < 0.75
    inside_only = denoise_transforms("train", patch_size=8, num_samples=64, seed=0)(item)
    assert all(float(p["mask"][0, 4, 4, 4]) == 1 for p in inside_only)
