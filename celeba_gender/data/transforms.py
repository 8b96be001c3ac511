"""Face crop, resizing, augmentation and normalisation, in two engines with one meaning.

- per sample (``per_sample_transform``): torchvision transforms v2 on one PIL image at a time,
  in DataLoader workers, as the reference study did;
- per batch (``BatchTransform``): on a uint8 (B, 3, H, W) batch from the tensor cache, on the
  batch's device (the GPU when there is one), with different random parameters per image.
  All geometric augmentations (flip, rotation, random resized crop, affine) and the face crop
  and resize are composed into one affine map per image and applied by a single
  ``grid_sample``: one resampling instead of three or four, which is what makes it fast on a
  CPU. Photometric augmentations (colour jitter, grayscale, erasing) come from kornia, which
  also draws parameters per image; torchvision's v2 transforms draw one set per call, which on
  a batch would give every face the same jitter.

Both engines read the same config: a face crop box, an image size, a list of augmentations
(``{name: rotation, degrees: 45}``), and the normalisation. Evaluation is deterministic and
identical in both engines (crop, antialiased resize, normalise). In the batch engine the
geometric augmentations are applied before the photometric ones whatever their order in the
list, and a rotated face shows the real pixels around the crop, and beyond the photo's edge
its edge pixels repeated, rather than torchvision's black corners.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from celeba_gender.config import is_integer
from celeba_gender.data.cache import POOL

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
    if top < 0 or left < 0 or box_height <= 0 or box_width <= 0:
        raise ValueError(f"data.face_crop {dict(face_crop)} lies outside a {width}x{height} image")
    return top, left, box_height, box_width


# ----------------------------------------------------------------------------- geometry, batched
# Each sampler returns (n, 3, 3) maps from output coordinates to input coordinates, both
# normalised to [-1, 1] (grid_sample's convention with align_corners=False).


def _symmetric(value: float | Sequence[float]) -> tuple[float, float]:
    return (-float(value), float(value)) if isinstance(value, int | float) else tuple(value)


def _uniform(n: int, bounds: Sequence[float]) -> torch.Tensor:
    low, high = float(bounds[0]), float(bounds[1])
    return torch.rand(n, dtype=torch.float64) * (high - low) + low


def _maps(n: int, a, b, c, d, tx, ty) -> torch.Tensor:
    maps = torch.zeros(n, 3, 3, dtype=torch.float64)
    maps[:, 0, 0], maps[:, 0, 1], maps[:, 0, 2] = a, b, tx
    maps[:, 1, 0], maps[:, 1, 1], maps[:, 1, 2] = c, d, ty
    maps[:, 2, 2] = 1.0
    return maps


def _with_probability(maps: torch.Tensor, p: float) -> torch.Tensor:
    """Keep each image's map with probability p, else the identity."""
    keep = torch.rand(len(maps)) < p
    identity = torch.eye(3, dtype=maps.dtype).expand_as(maps)
    return torch.where(keep.view(-1, 1, 1), maps, identity)


def _rotation_map(angle_degrees: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    angle = torch.deg2rad(angle_degrees)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return _maps(len(angle), cos, -sin, sin, cos, 0.0, 0.0)


def flip_maps(n: int, p: float = 0.5) -> torch.Tensor:
    return _with_probability(_maps(n, -1.0, 0.0, 0.0, 1.0, 0.0, 0.0), p)


def rotation_maps(n: int, degrees: float | Sequence[float], p: float = 1.0) -> torch.Tensor:
    return _with_probability(_rotation_map(_uniform(n, _symmetric(degrees))), p)


def resized_crop_maps(
    n: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    p: float = 1.0,
) -> torch.Tensor:
    """Like RandomResizedCrop: a box of a random area fraction and aspect ratio, placed
    uniformly where it fits (sides clipped to the image instead of torchvision's retries)."""
    area = _uniform(n, scale)
    aspect = torch.exp(_uniform(n, (math.log(ratio[0]), math.log(ratio[1]))))
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (torch.rand(n, dtype=torch.float64) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, dtype=torch.float64) * 2 - 1) * (1 - height)
    return _with_probability(_maps(n, width, 0.0, 0.0, height, centre_x, centre_y), p)


def affine_maps(
    n: int,
    degrees: float | Sequence[float] = 0.0,
    translate: Sequence[float] | None = None,
    scale: Sequence[float] | None = None,
    p: float = 1.0,
) -> torch.Tensor:
    """Like RandomAffine: rotate, scale, and shift by up to ``translate`` of the image size."""
    factor = _uniform(n, scale) if scale else torch.ones(n, dtype=torch.float64)
    maps = _rotation_map(_uniform(n, _symmetric(degrees)), factor)
    if translate:
        # Output = S R input + t, so input = (S R)^-1 (output - t); t spans 2 units per side.
        shift = (
            torch.stack(
                [
                    _uniform(n, (-translate[0], translate[0])),
                    _uniform(n, (-translate[1], translate[1])),
                ],
                dim=1,
            )
            * 2
        )
        maps[:, :2, 2] = -(maps[:, :2, :2] @ shift.unsqueeze(-1)).squeeze(-1)
    return _with_probability(maps, p)


# ----------------------------------------------------------------------------- the registry


def _kornia():
    import kornia.augmentation as K  # imported on first use: only the batch engine needs it

    return K


def _apply(transform: nn.Module, p: float) -> nn.Module:
    return transform if p >= 1.0 else v2.RandomApply([transform], p=p)


@dataclass(frozen=True)
class Augmentation:
    """One augmentation in both engines. ``per_sample(size, **options)`` builds a v2 transform;
    ``batched`` is a map sampler ``(n, **options)`` when ``geometric``, else a builder
    ``(size, **options)`` of a kornia module."""

    per_sample: Callable[..., nn.Module]
    batched: Callable[..., Any]
    geometric: bool


AUGMENTATIONS: dict[str, Augmentation] = {
    "horizontal_flip": Augmentation(
        per_sample=lambda size, p=0.5: v2.RandomHorizontalFlip(p),
        batched=flip_maps,
        geometric=True,
    ),
    "rotation": Augmentation(
        per_sample=lambda size, degrees, p=1.0: _apply(v2.RandomRotation(degrees), p),
        batched=rotation_maps,
        geometric=True,
    ),
    "random_resized_crop": Augmentation(
        per_sample=lambda size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p=1.0: _apply(
            v2.RandomResizedCrop((size, size), tuple(scale), tuple(ratio), antialias=True), p
        ),
        batched=resized_crop_maps,
        geometric=True,
    ),
    "affine": Augmentation(
        per_sample=lambda size, degrees=0.0, translate=None, scale=None, p=1.0: _apply(
            v2.RandomAffine(degrees, translate and tuple(translate), scale and tuple(scale)), p
        ),
        batched=affine_maps,
        geometric=True,
    ),
    # Kornia's defaults for p differ from torchvision's, so p is always passed explicitly.
    "color_jitter": Augmentation(
        per_sample=lambda size, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0: (
            _apply(v2.ColorJitter(brightness, contrast, saturation, hue), p)
        ),
        batched=lambda size, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0: (
            _kornia().ColorJitter(brightness, contrast, saturation, hue, p=p)
        ),
        geometric=False,
    ),
    "grayscale": Augmentation(
        per_sample=lambda size, p=0.1: v2.RandomGrayscale(p),
        batched=lambda size, p=0.1: _kornia().RandomGrayscale(p=p),
        geometric=False,
    ),
    "random_erasing": Augmentation(
        per_sample=lambda size, scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5: v2.RandomErasing(
            p, tuple(scale), tuple(ratio)
        ),
        batched=lambda size, scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5: _kornia().RandomErasing(
            tuple(scale), tuple(ratio), p=p
        ),
        geometric=False,
    ),
}


def _parse(spec: Mapping[str, Any]) -> tuple[str, Augmentation, dict[str, Any]]:
    options = dict(spec)
    name = options.pop("name", None)
    if name not in AUGMENTATIONS:
        raise ValueError(
            f"Unknown augmentation {name!r} in data.augmentations; "
            f"choose from {', '.join(sorted(AUGMENTATIONS))}."
        )
    return name, AUGMENTATIONS[name], options


def _check_options(name: str, build: Callable[..., Any], *args: Any, **options: Any) -> Any:
    try:
        return build(*args, **options)
    except TypeError as error:
        raise ValueError(f"Augmentation {name!r}: {error}") from None


# ----------------------------------------------------------------------------- per sample


class FaceCrop(v2.Transform):
    """Crop the configured face box (scaled to the image's size)."""

    def __init__(self, face_crop: Mapping[str, int] | None) -> None:
        super().__init__()
        self.face_crop = dict(face_crop) if face_crop else None

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = inpt.shape[-2:]
        top, left, box_height, box_width = crop_box(self.face_crop, height, width)
        # The public functional picks the kernel for the input's type (tensor, tv_tensors) itself.
        return v2.functional.crop(inpt, top, left, box_height, box_width)


def per_sample_transform(
    image_size: int,
    face_crop: Mapping[str, int] | None,
    augmentations: Sequence[Mapping[str, Any]] | None,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
) -> v2.Compose:
    """PIL image -> normalised float tensor (3, size, size); augmented only when ``train``."""
    augment = []
    if train:
        for spec in augmentations or []:
            name, augmentation, options = _parse(spec)
            augment.append(_check_options(name, augmentation.per_sample, image_size, **options))
    return v2.Compose(
        [
            v2.ToImage(),
            FaceCrop(face_crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize((image_size, image_size), antialias=True),
            *augment,
            v2.Normalize(list(mean), list(std)),
        ]
    )


# ----------------------------------------------------------------------------- batched


class BatchTransform(nn.Module):
    """uint8 (B, 3, H, W) batch -> normalised float (B, 3, size, size), on the batch's device.

    A training batch may instead be int16 (B, 3, H // 2, W // 2): the pooled cache's sums of
    2x2 pixel blocks of the (H, W) = ``cache_size`` frames (``reads_pooled`` says for which
    sizes); it gives the very same batch.
    """

    def __init__(
        self,
        image_size: int,
        face_crop: Mapping[str, int] | None,
        augmentations: Sequence[Mapping[str, Any]] | None,
        mean: Sequence[float],
        std: Sequence[float],
        cache_size: Sequence[int] = (ALIGNED_HEIGHT, ALIGNED_WIDTH),
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.face_crop = dict(face_crop) if face_crop else None
        self.cache_size = tuple(int(side) for side in cache_size)
        self.geometric: list[Callable[[int], torch.Tensor]] = []
        photometric = []
        for spec in augmentations or []:
            name, augmentation, options = _parse(spec)
            if augmentation.geometric:
                _check_options(name, augmentation.batched, 1, **options)  # fail early
                self.geometric.append(partial(augmentation.batched, **options))
            else:
                photometric.append(
                    _check_options(name, augmentation.batched, image_size, **options)
                )
        self.photometric = nn.Sequential(*photometric) if photometric else None
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)

    def sample_maps(self, n: int) -> torch.Tensor:
        """Output-to-crop maps of the geometric augmentations, composed in list order."""
        maps = _identity_maps(n)
        for sampler in self.geometric:
            maps = maps @ sampler(n)
        return maps

    def shrink_factor(self, size: int, frame: Sequence[int]) -> int:
        """The integer factor a training batch of side ``size`` box-filters a (height, width)
        ``frame`` by before its resampling (1: none)."""
        _, _, box_height, box_width = crop_box(self.face_crop, *frame)
        return max(min(box_height, box_width) // size, 1)

    def reads_pooled(self, size: int) -> bool:
        """Whether training batches of side ``size`` can come from the pooled cache (the
        cache's 2x2 block sums): they are warped, with a box filter by a multiple of 2."""
        warped = bool(self.geometric) or size != self.image_size
        return warped and self.shrink_factor(size, self.cache_size) % POOL == 0

    def warp(
        self, images: torch.Tensor, maps: torch.Tensor, size: int | None = None
    ) -> tuple[torch.Tensor, float]:
        """Crop, resize to ``size`` (default ``image_size``) and apply ``maps`` (B, 3, 3) in one
        bilinear resampling.

        Returns the batch and the factor that brings it to [0, 1]: scaling is left to the
        normalisation, so it costs no extra pass over the batch.
        """
        size = size or self.image_size
        pooled = images.dtype == torch.int16  # the pooled cache's block sums
        frame = self.cache_size if pooled else tuple(images.shape[-2:])
        top, left, box_height, box_width = crop_box(self.face_crop, *frame)
        # Shrinking more than 2x with bilinear taps aliases: box-filter by the integer factor
        # first. A sum of strided slices is several times faster than avg_pool2d on a CPU. It
        # drops the last rows/columns that do not fill a window; the frame accounts for that.
        factor = self.shrink_factor(size, frame)
        if pooled and (factor % POOL or images.shape[-2:] != (frame[0] // POOL, frame[1] // POOL)):
            raise ValueError(
                f"A batch of {POOL}x{POOL} block sums {tuple(images.shape[-2:])} cannot give "
                f"{size}-px images of {frame[0]}x{frame[1]} frames (box filter {factor}x): "
                "the training dataset should read the full cache for this size"
            )
        batch = images.float()
        # The pooled sums are the first POOL x POOL of the box filter, exactly (small integers
        # add exactly in float32): summing the rest gives the batch the full frames give.
        remaining = factor // POOL if pooled else factor
        if remaining >= 2:
            rows, columns = batch.shape[-2] // remaining, batch.shape[-1] // remaining
            batch = sum(
                batch[..., i : rows * remaining : remaining, j : columns * remaining : remaining]
                for i in range(remaining)
                for j in range(remaining)
            )
        frame_height = batch.shape[-2] * factor
        frame_width = batch.shape[-1] * factor
        # Crop coordinates in [-1, 1] -> coordinates of the (pooled) frame in [-1, 1].
        to_frame = torch.tensor(
            [
                [box_width / frame_width, 0.0, (2 * left + box_width) / frame_width - 1],
                [0.0, box_height / frame_height, (2 * top + box_height) / frame_height - 1],
                [0.0, 0.0, 1.0],
            ],
            dtype=torch.float64,
        )
        theta = (to_frame @ maps)[:, :2, :].to(batch.device, torch.float32)
        # Outside the photo, repeat its edge (as the evaluation resize does at the crop's edge).
        grid = _affine_grid(theta, size)
        warped = F.grid_sample(batch, grid, padding_mode="border", align_corners=False)
        return warped, 1.0 / (255 * factor * factor)

    def resize(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The deterministic evaluation path: crop, antialiased resize (and the [0, 1] factor)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"evaluation resizes uint8 frames, not {images.dtype} (block sums)")
        top, left, height, width = crop_box(self.face_crop, *images.shape[-2:])
        batch = images[..., top : top + height, left : left + width].float()
        size = (self.image_size, self.image_size)
        # Antialiasing only changes a shrink; the plain kernel is faster when enlarging.
        shrink = self.image_size < max(height, width)
        resized = F.interpolate(batch, size, mode="bilinear", antialias=shrink, align_corners=False)
        return resized, 1.0 / 255

    @torch.no_grad()
    def forward(self, images: torch.Tensor, train: bool, size: int | None = None) -> torch.Tensor:
        """``size``: the side of a training batch (progressive resizing); evaluation batches
        are always ``image_size``."""
        if train and (self.geometric or (size and size != self.image_size)):
            maps = self.sample_maps(len(images)) if self.geometric else _identity_maps(len(images))
            batch, scale = self.warp(images, maps, size)
        else:
            batch, scale = self.resize(images)
        if train and self.photometric is not None:
            batch, scale = self.photometric(batch.mul_(scale)), 1.0
        # (x * scale - mean) / std, in place (an out-of-place addcmul is several times slower).
        return batch.mul_(scale / self.std).add_(-self.mean / self.std)


def _identity_maps(n: int) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)


# data.progressive_resizing's optional keys (the data module fills them in from here).
PROGRESSIVE_DEFAULTS: dict[str, Any] = {"ramp": (0.25, 0.75), "multiple": 16}


PROGRESSIVE_EXAMPLE = "{start_size: 64, ramp: [0.25, 0.75], multiple: 16}, or null (off)"


def progressive_settings(
    settings: Mapping[str, Any] | None, image_size: int, loader: str
) -> dict[str, Any] | None:
    """data.progressive_resizing read: {start_size, ramp: (from, to), multiple} with defaults,
    or None (off). The one statement of what it allows: the config schema refuses a value
    this raises ``ValueError`` for (naming the key), so a run never reaches it with one."""
    if not settings:
        return None
    values = {**PROGRESSIVE_DEFAULTS, **dict(settings)}
    unknown = set(values) - {"start_size", "ramp", "multiple"}
    ramp = values["ramp"]
    problem = None
    if unknown:
        problem = f"unknown keys {sorted(unknown)}"
    elif not is_integer(values.get("start_size")) or not 8 <= values["start_size"] <= image_size:
        problem = f"start_size must be an integer from 8 to data.image_size ({image_size})"
    elif (
        not isinstance(ramp, Sequence)
        or len(ramp) != 2
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in ramp)
        or not 0 <= ramp[0] <= ramp[1] <= 1
    ):
        problem = "ramp must be 2 fractions of the epochs, 0 <= from <= to <= 1"
    elif not is_integer(values["multiple"]) or values["multiple"] < 1:
        problem = "multiple must be an integer >= 1"
    elif loader != "cached":
        problem = "it needs data.loader=cached (whole batches are resized on the device)"
    if problem:
        raise ValueError(problem)
    values["ramp"] = tuple(float(f) for f in ramp)
    return values


def progressive_image_size(
    epoch: int,
    max_epochs: int,
    final_size: int,
    start_size: int,
    ramp: Sequence[float] = PROGRESSIVE_DEFAULTS["ramp"],
    multiple: int = PROGRESSIVE_DEFAULTS["multiple"],
) -> int:
    """Training side at ``epoch`` (0-based) under progressive resizing, as FFCV's ResNet recipes
    do it: ``start_size`` until ``ramp[0]`` of the epochs, then growing linearly to reach
    ``final_size`` at ``ramp[1]``, rounded down to a ``multiple`` (each side is a new shape
    for the kernels, so few of them), never below ``start_size``."""
    first, last = (round(fraction * max_epochs) for fraction in ramp)
    if epoch >= last:
        return final_size
    if epoch < first:
        return start_size
    exact = start_size + (final_size - start_size) * (epoch - first) / max(last - first, 1)
    return min(max(int(exact) // multiple * multiple, start_size), final_size)


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int, device: torch.device) -> torch.Tensor:
    """(size,) output pixel centres along one side, in [-1, 1]."""
    return (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid`` for a square output (align_corners=False). An affine map of pixel
    (x, y) is a part of its row plus a part of its column: for each output coordinate, one
    broadcast add of a (n, size, 1) and a (n, 1, size) table writes its plane of the grid
    (on a CPU several times faster than F.affine_grid or a batched matmul with the pixel
    coordinates). The planes are written one at a time, each with rows of ``size`` values:
    one add of both coordinates at once runs its inner loop over pairs (3-4x slower)."""
    steps = _pixel_centres(size, theta.device)
    grid = torch.empty(len(theta), size, size, 2, device=theta.device, dtype=theta.dtype)
    for coordinate in range(2):
        row_part = steps.view(1, size, 1) * theta[:, coordinate, 1, None, None]
        row_part += theta[:, coordinate, 2, None, None]
        column_part = steps.view(1, 1, size) * theta[:, coordinate, 0, None, None]
        torch.add(row_part, column_part, out=grid[..., coordinate])
    return grid
