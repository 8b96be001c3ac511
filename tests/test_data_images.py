"""The one image decode (``data.images``) over a generated gallery of every mode and oddity PIL
opens, made from real faces of the subset: the face must survive, or the file be refused with a
reason; the scan, the decoded-image cache and the per-sample dataset must agree with it."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from celeba_gender.data.cache import ImageTensorCache, decode_rgb
from celeba_gender.data.datasets import PerSampleImageDataset
from celeba_gender.data.images import ImageDecodeError, decode_image, read_image
from celeba_gender.data.scan import scan_image_folder

SIZE = (178, 218)  # the subset's (width, height)
BLOCK = (slice(0, 24), slice(0, 24))  # rows, columns made transparent in the alpha cases


@dataclass
class Entry:
    """One generated file and what decoding it must give."""

    mode: str  # the file's own mode, as the scan reports it
    expected: np.ndarray | None = None  # exact RGB result (max difference ``tolerance``)
    tolerance: int = 0
    grey_correlation: float | None = None  # else: correlation with the face's grey at least
    refused: str | None = None  # else: a reason containing this


def _grey(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float64)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def build_gallery(face: Image.Image, folder: Path) -> dict[str, Entry]:
    """Write the gallery of ``face`` (an RGB CelebA image) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(face)
    grey = np.asarray(face.convert("L"))
    grey_rgb = np.repeat(grey[..., None], 3, axis=2)
    files: dict[str, tuple[bytes, Entry]] = {}

    def white_block(pixels: np.ndarray) -> np.ndarray:
        out = pixels.copy()
        out[BLOCK] = 255
        return out

    # Palette: adaptive, with a transparent index (its pixels show white), GIF with 2 frames.
    palette = face.quantize(255)
    files["palette.png"] = (_encode(palette, "PNG"), Entry("P", np.asarray(palette.convert("RGB"))))
    holed = palette.copy()
    np_holed = np.asarray(holed).copy()
    np_holed[BLOCK] = 255  # index 255 is unused by quantize(255): only the block has it
    holed = Image.fromarray(np_holed, mode="P")
    colours = palette.getpalette()
    holed.putpalette(colours + [0, 0, 0] * (256 - len(colours) // 3))  # index 255: black
    files["palette_transparent.png"] = (
        _encode(holed, "PNG", transparency=255),
        Entry("P", white_block(np.asarray(palette.convert("RGB")))),
    )
    red = Image.new("RGB", SIZE, (255, 0, 0))
    files["animated.gif"] = (
        _encode(face, "GIF", save_all=True, append_images=[red], duration=100, loop=0),
        Entry("P", grey_correlation=0.95),
    )
    files["animated.png"] = (
        _encode(face, "PNG", save_all=True, append_images=[red]),
        Entry("RGB", rgb),
    )
    files["multipage.tif"] = (
        _encode(face, "TIFF", save_all=True, append_images=[red]),
        Entry("RGB", rgb),
    )
    # 1-bit: exactly its black and white pixels, and still the face at a coarser scale.
    bilevel = face.convert("1")
    files["bilevel.png"] = (_encode(bilevel, "PNG"), Entry("1", np.asarray(bilevel.convert("RGB"))))
    # Grey, grey + alpha (a transparent block storing black shows white), RGBA likewise.
    files["grey.png"] = (_encode(face.convert("L"), "PNG"), Entry("L", grey_rgb))
    la = np.dstack([grey, np.full(grey.shape, 255, np.uint8)])
    la[BLOCK] = 0
    files["grey_alpha.png"] = (
        _encode(Image.fromarray(la, mode="LA"), "PNG"),
        Entry("LA", white_block(grey_rgb)),
    )
    rgba = np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])
    rgba[BLOCK] = 0
    files["rgba.png"] = (
        _encode(Image.fromarray(rgba, mode="RGBA"), "PNG"),
        Entry("RGBA", white_block(rgb)),
    )
    # Wide samples: 16-bit (full range, and 12 bits stored in 16), 32-bit integer, float.
    files["grey16.png"] = (
        _encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        Entry("I;16", grey_rgb),
    )
    files["grey16.tif"] = (
        _encode(Image.fromarray(grey.astype(np.uint16) * 257), "TIFF"),
        Entry("I;16", grey_rgb),
    )
    twelve_bit = (grey.astype(np.uint32) * 4095 + 127) // 255
    files["grey12_in_16.tif"] = (
        _encode(Image.fromarray(twelve_bit.astype(np.uint16)), "TIFF"),
        Entry("I;16", grey_rgb, tolerance=1),
    )
    files["int32.tif"] = (
        _encode(Image.fromarray(grey.astype(np.int32) * 100_000 - 5_000_000), "TIFF"),
        Entry("I", grey_correlation=0.999),
    )
    files["float.tif"] = (
        _encode(Image.fromarray(grey.astype(np.float32) / 255), "TIFF"),
        Entry("F", grey_rgb),
    )
    # CMYK (exact in TIFF, JPEG-lossy in JPEG), YCbCr, LAB, lossless WebP, BMP.
    files["cmyk.tif"] = (_encode(face.convert("CMYK"), "TIFF"), Entry("CMYK", rgb))
    files["cmyk.jpg"] = (_encode(face.convert("CMYK"), "JPEG", quality=95), Entry("CMYK", None))
    files["cmyk.jpg"][1].grey_correlation = 0.98
    files["lab.tif"] = (_encode(face.convert("LAB"), "TIFF"), Entry("LAB", grey_correlation=0.99))
    files["lossless.webp"] = (_encode(face, "WEBP", lossless=True), Entry("RGB", rgb))
    files["face.bmp"] = (_encode(face, "BMP"), Entry("RGB", rgb))
    # EXIF orientations 2..8: stored transformed, the tag says how to undo it.
    transforms = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    for orientation, transform in transforms.items():
        stored = face.transpose(transform)
        files[f"exif{orientation}.png"] = (
            _encode(stored, "PNG", exif=_exif(orientation)),
            Entry("RGB", rgb),
        )
    files["exif6.jpg"] = (
        _encode(face.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=_exif(6)),
        Entry("RGB", grey_correlation=0.98),
    )
    # Sizes: extreme aspect ratios are read as they are; a few pixels are refused.
    wide, tall = face.resize((1600, 8)), face.resize((8, 1200))
    files["wide.png"] = (_encode(wide, "PNG"), Entry("RGB", np.asarray(wide)))
    files["tall.png"] = (_encode(tall, "PNG"), Entry("RGB", np.asarray(tall)))
    files["tiny.png"] = (_encode(face.resize((3, 4)), "PNG"), Entry("RGB", refused="too small"))
    files["one_pixel.gif"] = (_encode(face.resize((1, 1)), "GIF"), Entry("P", refused="too small"))
    # Broken ones.
    jpeg = _encode(face, "JPEG", quality=95)
    files["truncated.jpg"] = (jpeg[: len(jpeg) // 2], Entry("", refused="truncated"))
    png = _encode(face, "PNG")
    files["truncated.png"] = (png[: len(png) // 2], Entry("", refused="unreadable"))
    files["empty.jpg"] = (b"", Entry("", refused="zero-byte"))
    files["text.jpg"] = (b"not an image at all\n", Entry("", refused="not an image"))

    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: entry for name, (_, entry) in files.items()}


@pytest.fixture(scope="module")
def faces(subset_root) -> list[Image.Image]:
    names = sorted(p.name for p in (subset_root / "img_align_celeba").iterdir())[:2]
    return [Image.open(subset_root / "img_align_celeba" / n).convert("RGB") for n in names]


@pytest.fixture(scope="module")
def gallery(faces, tmp_path_factory) -> tuple[Path, Image.Image, dict[str, Entry]]:
    folder = tmp_path_factory.mktemp("gallery")
    return folder, faces[0], build_gallery(faces[0], folder)


def test_every_mode_decodes_to_its_face_or_is_refused_with_a_reason(gallery):
    folder, face, entries = gallery
    original_grey = _grey(np.asarray(face))
    for name, entry in entries.items():
        if entry.refused:
            with pytest.raises(ImageDecodeError, match=entry.refused) as caught:
                decode_image(folder / name, name=name)
            assert caught.value.name == name
            continue
        image = decode_image(folder / name, name=name)
        assert image.mode == "RGB", name
        pixels = np.asarray(image)
        if entry.expected is not None:
            assert pixels.shape == entry.expected.shape, name
            difference = np.abs(pixels.astype(int) - entry.expected.astype(int)).max()
            assert difference <= entry.tolerance, (name, difference)
        if entry.grey_correlation is not None:
            assert pixels.shape[:2] == (SIZE[1], SIZE[0]), name
            correlation = _correlation(_grey(pixels), original_grey)
            assert correlation > entry.grey_correlation, (name, correlation)
        if pixels.shape[:2] == (SIZE[1], SIZE[0]) and not name.startswith("bilevel"):
            # Every lossless or near-lossless mode is still the face (not a white square).
            assert _correlation(_grey(pixels), original_grey) > 0.95, name
            assert abs(_grey(pixels).mean() - original_grey.mean()) < 12, name


def test_bit_depth_and_brightness_survive(gallery):
    """A 16-bit face is that face; 12 bits stored in 16 are not left nearly black."""
    folder, face, _ = gallery
    grey = _grey(np.asarray(face))
    for name in ("grey16.png", "grey16.tif", "grey12_in_16.tif", "float.tif"):
        decoded = _grey(np.asarray(decode_image(folder / name)))
        assert abs(decoded.mean() - grey.mean()) < 1, name
        assert decoded.std() > 0.9 * grey.std(), name
    # 1-bit dithering keeps the face at a coarser scale (8x8 block means).
    bilevel = _grey(np.asarray(decode_image(folder / "bilevel.png")))

    def blocks(values):
        h, w = (values.shape[0] // 8) * 8, (values.shape[1] // 8) * 8
        return values[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))

    assert _correlation(blocks(bilevel), blocks(grey)) > 0.95


def test_first_frame_and_upright_orientation(gallery):
    folder, face, _ = gallery
    decoded = read_image(folder / "animated.gif")
    assert decoded.frames == 2 and decoded.format == "GIF"
    red = np.array([255, 0, 0])
    # The first frame is the face, not the red second frame.
    assert np.abs(np.asarray(decoded.image).astype(int) - red).sum(axis=2).mean() > 100
    for orientation in range(2, 9):
        image = decode_image(folder / f"exif{orientation}.png")
        assert image.size == SIZE
        assert np.array_equal(np.asarray(image), np.asarray(face)), orientation


def test_the_scan_accepts_the_gallery_and_refuses_with_reasons(gallery, tmp_path):
    folder, _, entries = gallery
    scan, facts = scan_image_folder(folder, tmp_path / "cache")
    rows = scan.set_index("file")
    assert sorted(rows.index) == sorted(entries)
    for name, entry in entries.items():
        row = rows.loc[name]
        if entry.refused:
            assert entry.refused in row["problem"], (name, row["problem"])
            continue
        assert row["problem"] == "", (name, row["problem"])
        assert row["mode"] == entry.mode, (name, row["mode"])
        upright = decode_image(folder / name).size
        assert (row["width"], row["height"]) == upright, name  # EXIF-rotated: upright size
    assert facts["checked"] == len(entries)


def test_cache_rows_and_per_sample_items_equal_the_decode(gallery, tmp_path):
    folder, _, entries = gallery
    names = sorted(name for name, entry in entries.items() if not entry.refused)
    files = [folder / name for name in names]
    cache, built = ImageTensorCache.build_or_open(
        files, names, tmp_path / "cache", SIZE[1], SIZE[0], workers=2
    )
    assert built
    dataset = PerSampleImageDataset(
        files,
        np.zeros(len(files)),
        np.arange(len(files)),
        transform=lambda image: torch.from_numpy(np.asarray(image).copy()),
    )
    for row, path in enumerate(files):
        image = decode_image(path)
        if image.size != SIZE:
            image = image.resize(SIZE, Image.Resampling.BILINEAR)
        expected = np.asarray(image).transpose(2, 0, 1)
        assert np.array_equal(cache.gather([row])[0], expected), path.name
        assert np.array_equal(decode_rgb(path, SIZE[1], SIZE[0]), expected), path.name
        item, _, _ = dataset[row]
        assert np.array_equal(item.numpy(), np.asarray(decode_image(path))), path.name


@pytest.mark.parametrize("top", [1.3, 2.0, 40.0, 1000.0, -1.0])
def test_float_pictures_outside_zero_to_one_keep_their_content(gallery, top):
    """Floats have no bit depth: beyond the usual 0..1, a face stored as 0..1.3 (a filter's
    overshoot) or 0..2 must not become a black square; NaN and infinity are only a few
    pixels."""
    _, face, _ = gallery
    grey = _grey(np.asarray(face))
    values = (grey / 255 * top).astype(np.float32)
    values[0, :3] = (np.nan, np.inf, -np.inf)
    decoded = _grey(np.asarray(decode_image(_encode(Image.fromarray(values, mode="F"), "TIFF"))))
    assert _correlation(decoded[1:], grey[1:]) * np.sign(top) > 0.99, top
    assert decoded[1:].std() > 0.5 * grey[1:].std(), (top, decoded.std(), grey.std())


def test_a_tensor_cache_from_before_the_decode_changed_is_not_reused(gallery, tmp_path):
    """Caches built by the earlier decode (convert("RGB"): 16-bit faces clipped white, EXIF
    ignored) were named by the files' fingerprints alone; the same files must not reuse them."""
    folder, _, entries = gallery
    names = sorted(name for name, entry in entries.items() if not entry.refused)
    files = [folder / name for name in names]
    old_key = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    old = tmp_path / "cache" / f"images-{SIZE[1]}x{SIZE[0]}-{len(files)}-{old_key}.u8"
    old.parent.mkdir()
    old.write_bytes(b"\xff" * (len(files) * 3 * SIZE[0] * SIZE[1]))
    old.with_suffix(".json").write_text("{}")
    cache, built = ImageTensorCache.build_or_open(
        files, names, tmp_path / "cache", SIZE[1], SIZE[0], workers=2
    )
    assert built and cache.path != old
    row = names.index("grey16.png")
    assert np.array_equal(cache.gather([row])[0], decode_rgb(files[row], SIZE[1], SIZE[0]))
