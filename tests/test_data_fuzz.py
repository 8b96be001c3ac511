"""Seeded fuzzing of a small CelebA copy: random broken annotation files and image files.

Whatever the damage, reading the copy either succeeds or raises DataError with a message; no
other exception. When it succeeds, no broken image is usable, every valid one (strange mode,
wrong extension) is, and no label differs from the real annotation."""

from __future__ import annotations

import io
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import _subset_names, _write_official_annotations
from PIL import Image

from celeba_gender.data import DataError
from celeba_gender.data.datamodule import CelebADataModule

EXAMPLES = 200  # about 15 s on two CPU cores
COUNT = 20  # images in the copy
# Damage done on the lines, then written back.
REWRITTEN = (
    "drop field",
    "extra field",
    "bad value",
    "empty field",
    "bad header",
    "duplicate",
    "conflicting duplicate",
    "blank lines",
)
BAD_VALUES = ["0.5", "2", "abc", "-", "NaN", "1e0", "--1", "1.0", "+-1", "x1", "½", "0x1"]
# Whole numbers pandas would read as 1, -1 or 0, but not written exactly so.
BAD_VALUES += ["+1", "01", "-01", "-0", "+0", "1_0", "\u0661"]


@dataclass
class Damage:
    """What one example did to the copy, and what must hold if reading it succeeds."""

    steps: list[str] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)  # image files that must not be usable
    valid: set[str] = field(default_factory=set)  # image files that must be usable


@pytest.fixture(scope="module")
def base_copy(subset_root, tmp_path_factory) -> tuple[Path, list[str], dict[str, int]]:
    root = tmp_path_factory.mktemp("fuzz_base") / "celeba"
    names = _subset_names(subset_root, COUNT)
    (root / "img_align_celeba").mkdir(parents=True)
    for name in names:
        shutil.copy(subset_root / "img_align_celeba" / name, root / "img_align_celeba" / name)
    _write_official_annotations(subset_root, root, names, root / "Anno", root / "Eval")
    lines = (root / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    columns = ["male" if name == "Male" else name for name in lines[1].split()]
    labels = {
        line.split()[0]: dict(zip(columns, (int(v == "1") for v in line.split()[1:]), strict=True))
        for line in lines[2:]
    }
    return root, names, labels


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _damage_annotations(rng: random.Random, root: Path, damage: Damage) -> None:
    path = rng.choice(
        [
            root / "Anno" / "list_attr_celeba.txt",
            root / "Anno" / "list_attr_celeba.txt",
            root / "Anno" / "identity_CelebA.txt",
            root / "Eval" / "list_eval_partition.txt",
        ]
    )
    data = path.read_bytes()
    lines = data.decode(errors="replace").split("\n")
    rows = [i for i, line in enumerate(lines) if len(line.split()) >= 2 and i >= 2]
    kind = rng.choice(
        [
            "truncate",
            "drop field",
            "extra field",
            "bad value",
            "empty field",
            "bad header",
            "random bytes",
            "insert bytes",
            "duplicate",
            "conflicting duplicate",
            "bom",
            "crlf",
            "cr",
            "empty",
            "blank lines",
        ]
    )
    if not rows or len(lines) < 3:  # already ruined by an earlier step
        kind = rng.choice(["truncate", "random bytes", "bom", "empty"])
    damage.steps.append(f"{path.name}: {kind}")
    row = rng.choice(rows) if rows else 0
    fields = lines[row].split()
    if kind == "truncate":
        data = data[: rng.randrange(len(data))] if data else data
    elif kind == "drop field":
        del fields[rng.randrange(1, len(fields))]
        lines[row] = " ".join(fields)
    elif kind == "extra field":
        fields.insert(rng.randrange(1, len(fields) + 1), rng.choice(["1", "-1", "0"]))
        lines[row] = " ".join(fields)
    elif kind == "bad value":
        fields[rng.randrange(1, len(fields))] = rng.choice(BAD_VALUES)
        lines[row] = " ".join(fields)
    elif kind == "empty field":
        fields[rng.randrange(1, len(fields))] = ""
        lines[row] = " ".join(fields)
    elif kind == "bad header":
        header = 1 if "list_attr" in path.name else 0
        lines[header] = rng.choice(
            [
                lines[header].replace("Male", "Mal"),
                lines[header] + " Male",
                " ".join(lines[header].split()[:-1]),
                "abc",
                "",
            ]
        )
    elif kind == "random bytes":
        data = rng.randbytes(rng.randrange(1, 400))
    elif kind == "insert bytes":
        at = rng.randrange(len(data))
        data = data[:at] + rng.randbytes(rng.randrange(1, 8)) + data[at:]
    elif kind == "duplicate":
        lines.insert(rng.randrange(2, len(lines)), lines[row])
    elif kind == "conflicting duplicate":
        changed = fields[:-1] + [{"1": "-1", "-1": "1"}.get(fields[-1], str(int(fields[-1]) + 1))]
        if "partition" in path.name:
            changed[-1] = str((int(fields[-1]) + 1) % 3)
        lines.insert(rng.randrange(2, len(lines)), " ".join(changed))
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + data
    elif kind == "crlf":
        data = data.replace(b"\n", b"\r\n")
    elif kind == "cr":
        data = data.replace(b"\n", b"\r")
    elif kind == "empty":
        data = b""
    elif kind == "blank lines":
        lines.insert(rng.randrange(len(lines)), rng.choice(["", "   ", "\t"]))
    if kind in REWRITTEN:
        data = "\n".join(lines).encode()
    path.write_bytes(data)


def _damage_image(
    rng: random.Random, image_dir: Path, originals: Path, names: list[str], damage: Damage
) -> None:
    name = rng.choice(names)
    path = image_dir / name
    data = (originals / name).read_bytes()  # an earlier step may have damaged it already
    kind = rng.choice(
        [
            "truncated",
            "random bytes",
            "zero bytes",
            "text",
            "tiny",
            "png named jpg",
            "jpeg named png",
            "grey16",
            "cmyk",
            "palette",
            "grey alpha",
            "bilevel",
            "folder",
            "symlink loop",
        ]
    )
    damage.steps.append(f"{name}: {kind}")
    face = Image.open(io.BytesIO(data)).convert("RGB")
    grey = np.asarray(face.convert("L"))
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    path.with_suffix(".png").unlink(missing_ok=True)
    damage.valid.discard(name)
    damage.valid.discard(path.with_suffix(".png").name)
    if kind == "truncated":
        path.write_bytes(data[: rng.randrange(1, len(data) - 1)])
    elif kind == "random bytes":
        path.write_bytes(rng.randbytes(rng.randrange(1, 5000)))
    elif kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("<html>not found</html>\n")
    elif kind == "tiny":
        path.write_bytes(_encode(face.resize((rng.randrange(1, 8), rng.randrange(1, 40))), "PNG"))
    elif kind == "png named jpg":
        path.write_bytes(_encode(face, "PNG"))
    elif kind == "jpeg named png":
        path.with_suffix(".png").write_bytes(data)  # valid, but not annotated under that name
        damage.broken.add(name)
        damage.valid.add(path.with_suffix(".png").name)
        return
    elif kind == "grey16":
        path.write_bytes(_encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"))
    elif kind == "cmyk":
        path.write_bytes(_encode(face.convert("CMYK"), "JPEG"))
    elif kind == "palette":
        path.write_bytes(_encode(face.quantize(64), "GIF"))
    elif kind == "grey alpha":
        path.write_bytes(_encode(face.convert("LA"), "PNG"))
    elif kind == "bilevel":
        path.write_bytes(_encode(face.convert("1"), "TIFF"))
    elif kind == "folder":
        path.mkdir()
    elif kind == "symlink loop":
        path.symlink_to(name)
    valid = kind in ("png named jpg", "grey16", "cmyk", "palette", "grey alpha", "bilevel")
    (damage.valid if valid else damage.broken).add(name)
    if valid:
        damage.broken.discard(name)


def _run_example(seed: int, base: Path, names: list[str], labels: dict, work: Path) -> None:
    rng = random.Random(seed)
    root = work / f"copy{seed}"
    shutil.copytree(base, root, symlinks=True)
    damage = Damage(valid=set(names))
    for _ in range(rng.randrange(1, 4)):
        if rng.random() < 0.5:
            _damage_annotations(rng, root, damage)
        else:
            _damage_image(rng, root / "img_align_celeba", base / "img_align_celeba", names, damage)
    damage.valid -= damage.broken
    split = rng.choice(["all", "all", "identity", "official"])
    context = f"seed {seed}, split={split}: {damage.steps}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = CelebADataModule(
                root,
                split=split,
                loader="cached",
                cache_dir=work / f"cache{seed}",
                num_workers=0,
                scan_workers=1,
            )
            module.prepare_data()
            module.setup()
            summary = module.summary()
    except DataError as error:
        assert str(error).strip(), context
        return
    except Exception as error:  # noqa: BLE001 - the point: nothing but DataError escapes
        pytest.fail(f"{context}: {type(error).__name__}: {error}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    images = module.index.images
    usable = set(images["file"])
    assert not usable & damage.broken, (context, usable & damage.broken)
    listed_valid = {n for n in damage.valid if n in labels}
    unannotated = set(summary["unannotated_files"])
    assert listed_valid - unannotated <= usable, (context, listed_valid - usable)
    for row in images.to_dict("records"):
        # Every attribute, not only the label: no value may be read as another one.
        read = {column: row[column] for column in labels[row["file_name"]]}
        assert read == labels[row["file_name"]], (context, row["file_name"])
    # One cache row per scanned entry; every usable image's row holds its pixels.
    assert len(module.cache) == len(module.index.cache_files), context
    pixels = module.cache.gather(images["cache_row"].to_numpy())
    assert pixels.reshape(len(images), -1).max(axis=1).min() > 0, context
    shutil.rmtree(work / f"cache{seed}", ignore_errors=True)


def test_random_damage_gives_a_data_error_or_a_correct_index(base_copy, tmp_path):
    base, names, labels = base_copy
    started = time.monotonic()
    for seed in range(EXAMPLES):
        _run_example(seed, base, names, labels, tmp_path)
    assert time.monotonic() - started < 120  # about 20 s here; far over means a hang
