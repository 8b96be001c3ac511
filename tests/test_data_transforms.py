"""The per-sample (torchvision v2) and batched engines mean the same thing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from celeba_gender.data import IMAGENET_MEAN, IMAGENET_STD
from celeba_gender.data.cache import decode_rgb
from celeba_gender.data.transforms import BatchTransform, crop_box, per_sample_transform

FACE = {"top": 30, "left": 0, "height": 178, "width": 178}


@pytest.fixture(scope="module")
def photos(subset_root) -> list:
    return sorted((subset_root / "img_align_celeba").glob("0*.jpg"))[:6]


@pytest.fixture(scope="module")
def uint8_batch(photos) -> torch.Tensor:
    return torch.from_numpy(np.stack([decode_rgb(p, 218, 178) for p in photos]))


def _batch(size: int, augmentations=None, face_crop=FACE) -> BatchTransform:
    return BatchTransform(size, face_crop, augmentations, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("face_crop", [FACE, None])
def test_evaluation_is_identical_in_both_engines(photos, uint8_batch, size, face_crop):
    transform = per_sample_transform(size, face_crop, [], IMAGENET_MEAN, IMAGENET_STD, train=False)
    with_pil = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
    batched = _batch(size, face_crop=face_crop)(uint8_batch, train=False)
    assert batched.shape == with_pil.shape == (len(photos), 3, size, size)
    assert torch.allclose(batched, with_pil, atol=1e-4)


def test_the_warp_without_augmentation_is_the_evaluation_resize(uint8_batch):
    """Checks the crop-to-frame coordinate map of the fused warp (no shrink at 224)."""
    transform = _batch(224)
    warped, scale = transform.warp(uint8_batch, torch.eye(3, dtype=torch.float64).repeat(6, 1, 1))
    resized, eval_scale = transform.resize(uint8_batch)
    # At the crop's top and bottom edge the warp reads the photo's real neighbouring rows where
    # the resize repeats the crop's edge; everywhere else the two sample the same points.
    assert torch.allclose(
        warped[..., 1:-1, :] * scale, resized[..., 1:-1, :] * eval_scale, atol=1e-4
    )
    assert (warped * scale - resized * eval_scale).abs().mean() < 1 / 255


def test_the_warp_of_a_shrink_stays_close_to_the_antialiased_resize(uint8_batch):
    transform = _batch(64)
    warped, scale = transform.warp(uint8_batch, torch.eye(3, dtype=torch.float64).repeat(6, 1, 1))
    resized, eval_scale = transform.resize(uint8_batch)
    # Box filter + bilinear vs antialiased bilinear: a few grey levels apart, same picture.
    assert (warped * scale - resized * eval_scale).abs().mean() < 4 / 255


def test_flip_and_rotation_match_torchvision(uint8_batch):
    # p=0 takes the training path (the fused warp) with every image's map the identity.
    unchanged = _batch(224, [{"name": "horizontal_flip", "p": 0.0}])(uint8_batch, train=True)
    flipped = _batch(224, [{"name": "horizontal_flip", "p": 1.0}])(uint8_batch, train=True)
    assert torch.allclose(flipped, unchanged.flip(-1), atol=1e-4)
    # A quarter turn of a square crop loses nothing: compare with torchvision's rotate (which
    # turns counter-clockwise for positive angles), away from the one-pixel edge.
    quarter = _batch(224, [{"name": "rotation", "degrees": [90, 90]}])(uint8_batch, train=True)
    expected = v2.functional.rotate(unchanged, 90)
    assert torch.allclose(quarter[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-4)


def test_batched_augmentation_differs_per_image_and_follows_the_seed(uint8_batch):
    same_face = uint8_batch[:1].repeat(8, 1, 1, 1)
    transform = _batch(
        64, [{"name": "rotation", "degrees": 45}, {"name": "color_jitter", "brightness": 0.4}]
    )
    torch.manual_seed(0)
    first = transform(same_face, train=True)
    distinct = {tuple(image.flatten()[:2000].tolist()) for image in first}
    assert len(distinct) == 8
    torch.manual_seed(0)
    assert torch.equal(first, transform(same_face, train=True))
    assert not torch.allclose(transform(same_face, train=False)[0], first[0])


@pytest.mark.parametrize(
    "augmentations",
    [
        [{"name": "random_resized_crop", "scale": [0.6, 1.0], "ratio": [0.8, 1.25]}],
        [{"name": "affine", "degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]}],
        [{"name": "grayscale", "p": 1.0}],
        [{"name": "random_erasing", "p": 1.0}],
    ],
)
def test_every_augmentation_runs_in_both_engines(photos, uint8_batch, augmentations):
    per_sample = per_sample_transform(64, FACE, augmentations, IMAGENET_MEAN, IMAGENET_STD, True)
    single = per_sample(Image.open(photos[0]).convert("RGB"))
    batched = _batch(64, augmentations)(uint8_batch, train=True)
    assert single.shape == batched.shape[1:] == (3, 64, 64)
    assert torch.isfinite(batched).all()


def test_unknown_augmentations_and_options_are_refused():
    with pytest.raises(ValueError, match="Unknown augmentation 'blur'.*horizontal_flip"):
        _batch(64, [{"name": "blur"}])
    with pytest.raises(ValueError, match="'rotation'.*degres"):
        per_sample_transform(
            64, FACE, [{"name": "rotation", "degres": 4}], (0,) * 3, (1,) * 3, True
        )
    with pytest.raises(ValueError, match="'rotation'"):
        _batch(64, [{"name": "rotation", "degres": 4}])


def test_face_crop_scales_with_the_image_and_rejects_boxes_outside_it():
    assert crop_box(FACE, 218, 178) == (30, 0, 178, 178)
    assert crop_box(FACE, 436, 356) == (60, 0, 356, 356)
    assert crop_box(None, 218, 178) == (0, 0, 218, 178)
    with pytest.raises(ValueError, match="outside"):
        crop_box({"top": 300, "left": 0, "height": 10, "width": 10}, 218, 178)


@pytest.mark.parametrize("size", [7, 64, 224])
def test_the_batched_warp_samples_where_torchs_affine_grid_does(size):
    """transforms._affine_grid (the cached loader's sampling grid, computed its own faster
    way) is F.affine_grid's, for rotations, flips, scales and shifts of a batch."""
    from celeba_gender.data.transforms import _affine_grid

    generator = torch.Generator().manual_seed(size)
    angle = torch.rand(16, generator=generator) * 6.3
    scale = 0.5 + torch.rand(16, 2, generator=generator)
    flip = torch.where(torch.rand(16, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(16, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = scale[:, 0] * angle.cos() * flip, -angle.sin()
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), scale[:, 1] * angle.cos()
    theta[:, :, 2] = torch.rand(16, 2, generator=generator) - 0.5
    expected = torch.nn.functional.affine_grid(theta, (16, 3, size, size), align_corners=False)
    assert torch.allclose(_affine_grid(theta, size), expected, atol=1e-5)
