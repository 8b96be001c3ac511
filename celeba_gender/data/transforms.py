"""Face crop, resizing, augmentation and normalisation, in two engines with one meaning.

- per sample (``per_sample_transform``): torchvision transforms v2 on one PIL image at a time,
  in DataLoader workers, as the reference study did;
- per batch (``BatchTransform``): on a uint8 (B, 3, H, W) batch from the tensor cache, on the
  batch's device (the GPU when there is one). The random augmentations come from kornia,
  which draws different parameters for every image of a batch; torchvision's v2 transforms
  draw one set per call, which on a batch would rotate every face by the same angle.

Both engines read the same config: a face crop box, an image size, a list of augmentations
(``{name: rotation, degrees: 45}``), and the normalisation. Evaluation is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

# The crop box is given in pixels of CelebA's aligned 178x218 frame (width x height) and scaled
# for images of another size.
ALIGNED_HEIGHT, ALIGNED_WIDTH = 218, 178


def crop_box(
    face_crop: Mapping[str, int] | None, height: int, width: int
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the face crop in an image of the given size."""
    if not face_crop:
        return 0, 0, height, width
    scale_y, scale_x = height / ALIGNED_HEIGHT, width / ALIGNED_WIDTH
    top = round(face_crop["top"] * scale_y)
    left = round(face_crop["left"] * scale_x)
    box_height = min(round(face_crop["height"] * scale_y), height - top)
    box_width = min(round(face_crop["width"] * scale_x), width - left)
    if box_height <= 0 or box_width <= 0:
        raise ValueError(f"data.face_crop {dict(face_crop)} lies outside a {width}x{height} image")
    return top, left, box_height, box_width


def _apply(transform: nn.Module, p: float) -> nn.Module:
    return transform if p >= 1.0 else v2.RandomApply([transform], p=p)


def _kornia():
    import kornia.augmentation as K  # imported on first use: only the batch engine needs it

    return K


# name -> (torchvision v2 builder, kornia builder); each takes the output size and the options.
# Kornia's own defaults for p differ from torchvision's, so p is always passed explicitly.
_AUGMENTATIONS: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module]]] = {
    "horizontal_flip": (
        lambda size, p=0.5: v2.RandomHorizontalFlip(p),
        lambda size, p=0.5: _kornia().RandomHorizontalFlip(p=p),
    ),
    "rotation": (
        lambda size, degrees, p=1.0: _apply(v2.RandomRotation(degrees), p),
        lambda size, degrees, p=1.0: _kornia().RandomRotation(degrees, p=p, align_corners=False),
    ),
    "color_jitter": (
        lambda size, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0: _apply(
            v2.ColorJitter(brightness, contrast, saturation, hue), p
        ),
        lambda size, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0: (
            _kornia().ColorJitter(brightness, contrast, saturation, hue, p=p)
        ),
    ),
    "random_resized_crop": (
        lambda size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p=1.0: _apply(
            v2.RandomResizedCrop((size, size), tuple(scale), tuple(ratio), antialias=True), p
        ),
        lambda size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p=1.0: _kornia().RandomResizedCrop(
            (size, size), tuple(scale), tuple(ratio), p=p, align_corners=False
        ),
    ),
    "affine": (
        lambda size, degrees=0.0, translate=None, scale=None, p=1.0: _apply(
            v2.RandomAffine(degrees, translate and tuple(translate), scale and tuple(scale)), p
        ),
        lambda size, degrees=0.0, translate=None, scale=None, p=1.0: _kornia().RandomAffine(
            degrees, translate and tuple(translate), scale and tuple(scale), p=p
        ),
    ),
    "grayscale": (
        lambda size, p=0.1: v2.RandomGrayscale(p),
        lambda size, p=0.1: _kornia().RandomGrayscale(p=p),
    ),
    "random_erasing": (
        lambda size, scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5: v2.RandomErasing(
            p, tuple(scale), tuple(ratio)
        ),
        lambda size, scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5: _kornia().RandomErasing(
            tuple(scale), tuple(ratio), p=p
        ),
    ),
}

AUGMENTATION_NAMES = tuple(sorted(_AUGMENTATIONS))


def build_augmentations(
    augmentations: Sequence[Mapping[str, Any]] | None, image_size: int, engine: str
) -> list[nn.Module]:
    """Instantiate a config list of augmentations for ``engine`` 'v2' or 'kornia'."""
    modules = []
    for spec in augmentations or []:
        options = dict(spec)
        name = options.pop("name", None)
        if name not in _AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation {name!r} in data.augmentations; "
                f"choose from {', '.join(AUGMENTATION_NAMES)}."
            )
        builder = _AUGMENTATIONS[name][0 if engine == "v2" else 1]
        try:
            modules.append(builder(image_size, **options))
        except TypeError as error:
            raise ValueError(f"Augmentation {name!r}: {error}") from None
    return modules


class FaceCrop(v2.Transform):
    """Crop the configured face box (scaled to the image's size)."""

    def __init__(self, face_crop: Mapping[str, int] | None) -> None:
        super().__init__()
        self.face_crop = dict(face_crop) if face_crop else None

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        top, left, box_height, box_width = crop_box(self.face_crop, height, width)
        return self._call_kernel(v2.functional.crop, inpt, top, left, box_height, box_width)


def per_sample_transform(
    image_size: int,
    face_crop: Mapping[str, int] | None,
    augmentations: Sequence[Mapping[str, Any]] | None,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
) -> v2.Compose:
    """PIL image -> normalised float tensor (3, size, size); augmented only when ``train``."""
    return v2.Compose(
        [
            v2.ToImage(),
            FaceCrop(face_crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize((image_size, image_size), antialias=True),
            *(build_augmentations(augmentations, image_size, "v2") if train else []),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class BatchTransform(nn.Module):
    """uint8 (B, 3, H, W) batch -> normalised float (B, 3, size, size), on the batch's device."""

    def __init__(
        self,
        image_size: int,
        face_crop: Mapping[str, int] | None,
        augmentations: Sequence[Mapping[str, Any]] | None,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.face_crop = dict(face_crop) if face_crop else None
        modules = build_augmentations(augmentations, image_size, "kornia")
        self.augment = nn.Sequential(*modules) if modules else None
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        top, left, height, width = crop_box(self.face_crop, *images.shape[-2:])
        batch = images[..., top : top + height, left : left + width].float().div_(255)
        size = (self.image_size, self.image_size)
        batch = F.interpolate(
            batch, size=size, mode="bilinear", antialias=True, align_corners=False
        )
        if train and self.augment is not None:
            batch = self.augment(batch)
        return (batch - self.mean.to(batch.device)) / self.std.to(batch.device)
