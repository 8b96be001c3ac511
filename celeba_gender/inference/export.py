"""ONNX export of a trained checkpoint (P(male) out, any batch size), with its evaluation
transform in the file's metadata so predict can use it alone.

    python -m celeba_gender.inference.export outputs/runs/.../checkpoints/best.ckpt [out.onnx]

An existing output is replaced only with --force, and the input checkpoint never (whatever
the spelling of its path). Any bad checkpoint ends in one line naming it (models/checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from celeba_gender.data import DataError
from celeba_gender.inference.predictor import (
    BACKBONE_KEY,
    EVAL_TRANSFORM_KEY,
    eval_transform_of,
    load_model,
)
from celeba_gender.models.checkpoints import ONNX_SUFFIX
from celeba_gender.progress import progress


class OutputRefused(DataError):
    """The output cannot be written: it would overwrite the checkpoint itself or (without
    --force) any file, or its folder cannot be made or written."""


def _same_file(one: Path, other: Path) -> bool:
    """Whether two spellings (relative, with '..', through symlinks) name one file."""
    try:
        if os.path.samefile(one, other):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    return one.expanduser().resolve() == other.expanduser().resolve()


def check_output(checkpoint: str | Path, output: str | Path, force: bool = False) -> Path:
    """``output`` if writing there loses nothing: never the input checkpoint (however spelled),
    never a folder, and an existing file only with ``force``."""
    checkpoint, output = Path(checkpoint).expanduser(), Path(output).expanduser()
    if _same_file(checkpoint, output):
        raise OutputRefused(
            f"{output} is the input checkpoint {checkpoint}: refusing to overwrite it; "
            "name another output file"
        )
    if output.is_dir():
        raise OutputRefused(f"{output} is a folder; name the .onnx file to write")
    if (output.exists() or output.is_symlink()) and not force:
        raise OutputRefused(f"{output} already exists: pass --force to replace it")
    return output


def export_onnx(
    checkpoint: str | Path, output: str | Path, opset: int = 18, force: bool = False
) -> Path:
    """Write ``output``: input ``images`` (N, 3, S, S) normalised, output ``p_male`` (N,).
    Refuses to overwrite the checkpoint, or an existing file unless ``force``; the file appears
    complete or not at all (written beside it, then renamed over it)."""
    output = check_output(checkpoint, output, force)
    # Load, trace and translate, write: torch's own step messages (verbose) replaced by one bar.
    with progress(total=3, desc=f"Exporting {output.name}", unit="step") as bar:
        return _export(checkpoint, output, opset, force, bar)


def _export(checkpoint: str | Path, output: Path, opset: int, force: bool, bar: Any) -> Path:
    import onnx

    model = load_model(checkpoint).eval()
    bar.update()
    settings = eval_transform_of(model, checkpoint)
    size = settings["image_size"]
    example = torch.zeros(2, 3, size, size)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"
        )
    except OSError as error:  # a file where a folder should be, no permission, a full disk
        raise OutputRefused(f"cannot write {output}: {error.strerror or error}") from None
    os.close(handle)
    try:
        torch.onnx.export(
            model,
            (example,),
            temporary,
            input_names=["images"],
            output_names=["p_male"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        bar.update()
        exported = onnx.load(temporary)
        for key, value in (
            (EVAL_TRANSFORM_KEY, json.dumps(settings)),
            (BACKBONE_KEY, model.hparams.backbone),
        ):
            exported.metadata_props.add(key=key, value=value)
        onnx.save(exported, temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        check_output(checkpoint, output, force)  # nothing appeared there meanwhile
        os.replace(temporary, output)  # a symlink at ``output`` is replaced, not its target
        bar.update()
    except OSError as error:  # the disk filled up, the folder went away
        raise OutputRefused(f"cannot write {output}: {error.strerror or error}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celeba_gender.inference.export")
    parser.add_argument("checkpoint")
    parser.add_argument("output", nargs="?", help="default: the checkpoint's name with .onnx")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    args = parser.parse_args(argv)
    output = args.output or Path(args.checkpoint).with_suffix(ONNX_SUFFIX)
    try:
        path = export_onnx(args.checkpoint, output, args.opset, args.force)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
