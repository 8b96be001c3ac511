"""A framing-robustness test set: CelebA's aligned faces re-framed as everyday photos.

Each aligned 178x218 image is scaled, rotated and pasted at a random place on a larger canvas
with a smooth random background (no faces in it, so the detector has one face to find). The
predict pipeline must then find, level and re-crop the face; comparing its accuracy with the
plain test accuracy on the same images measures what framing costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Framing:
    canvas: tuple[int, int] = (480, 400)  # width, height of the new photo
    scale: tuple[float, float] = (0.7, 1.5)  # face image size relative to the aligned 178x218
    degrees: float = 15.0  # rotation, uniform in [-degrees, degrees]
    feather: int = 12  # pixels of soft edge around the pasted image


def smooth_background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Low-frequency colour noise: a plausible, face-free background."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def reframe(face: Image.Image, framing: Framing, rng: np.random.Generator) -> Image.Image:
    """``face`` (an aligned crop) scaled, rotated and pasted on a larger random background."""
    scale = rng.uniform(*framing.scale)
    angle = rng.uniform(-framing.degrees, framing.degrees)
    width, height = round(face.width * scale), round(face.height * scale)
    resized = face.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    mask = Image.new("L", resized.size, 0)
    inset = framing.feather
    ImageDraw.Draw(mask).rectangle((inset, inset, width - inset, height - inset), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(framing.feather / 2))
    rotated = resized.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    rotated_mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    canvas = smooth_background(framing.canvas, rng)
    room_x = max(framing.canvas[0] - rotated.width, 0)
    room_y = max(framing.canvas[1] - rotated.height, 0)
    position = (int(rng.integers(0, room_x + 1)), int(rng.integers(0, room_y + 1)))
    canvas.paste(rotated, position, rotated_mask)
    return canvas
