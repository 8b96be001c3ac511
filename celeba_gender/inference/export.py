"""ONNX export of a trained checkpoint (P(male) out, any batch size), with its evaluation
transform in the file's metadata so predict can use it alone.

    python -m celeba_gender.inference.export outputs/runs/.../checkpoints/best.ckpt [out.onnx]

It prints, and writes into the file's metadata, what it made: the input and output (names,
shapes, the dynamic batch axis), the preprocessing predict applies before the graph (read off
predict's own transform, so the two cannot disagree), and a parity check: real aligned faces
through the checkpoint's PyTorch model and through the exported graph on onnxruntime, both as
predict runs them; above ``export.parity_tolerance`` (conf/predict.yaml) nothing is written.

An existing output is replaced only with --force, and the input checkpoint never (whatever
the spelling of its path). Any bad checkpoint ends in one line naming it (models/checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.transforms import v2

from celeba_gender.config import compose_config
from celeba_gender.data import DataError
from celeba_gender.data.cache import current_umask
from celeba_gender.data.transforms import ALIGNED_HEIGHT, ALIGNED_WIDTH, FaceCrop, crop_box
from celeba_gender.inference.photos import is_photo_name, load_photo
from celeba_gender.inference.predictor import (
    BACKBONE_KEY,
    EVAL_TRANSFORM_KEY,
    GenderPredictor,
)
from celeba_gender.models.checkpoints import ONNX_SUFFIX
from celeba_gender.progress import progress

# Metadata keys beside EVAL_TRANSFORM_KEY and BACKBONE_KEY (values: JSON).
PREPROCESSING_KEY = "celeba_gender.preprocessing"
INPUTS_KEY = "celeba_gender.inputs"
OUTPUTS_KEY = "celeba_gender.outputs"
PARITY_KEY = "celeba_gender.parity"
# The eval_transform entries predict's transform is built from (GenderPredictor); the others
# (cache_size: how training decoded its images) describe no step of predict's.
PREDICT_TRANSFORM_KEYS = ("image_size", "face_crop", "mean", "std")
BATCH_AXIS = "batch"


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


class ParityError(DataError):
    """The exported graph does not give the checkpoint's P(male), or there are no photos to
    check it on."""


def load_settings() -> DictConfig:
    """conf/predict.yaml, composed: its ``export`` section, ``max_pixels``, and the paths."""
    return compose_config("predict")


@dataclass(frozen=True)
class Export:
    """What export_onnx wrote, as the file's metadata holds it."""

    path: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    preprocessing: dict[str, Any]
    parity: dict[str, Any]

    def summary(self) -> list[str]:
        """The lines the command prints."""
        lines = [f"exported: {self.path}"]
        for kind, values in (("input", self.inputs), ("output", self.outputs)):
            for value in values:
                shape = ", ".join(map(str, value["shape"]))
                axis = value.get("batch_axis")
                dynamic = (
                    f" ({axis['name']}: any from {axis['min']} to {axis['max']})" if axis else ""
                )
                lines.append(f"{kind}: {value['name']} {value['dtype']} [{shape}]{dynamic}")
        source = self.preprocessing["input"]
        lines.append(
            f"preprocessing (predict's, in order) of an aligned {source['mode']} face crop "
            f"{source['width']}x{source['height']} (width x height):"
        )
        lines += [f"  {_step_text(step)}" for step in self.preprocessing["steps"]]
        lines.append(f"  then {self.preprocessing['layout']} (a batch of them)")
        lines.append(
            f"parity: max |P(male) difference| {self.parity['max_abs_diff_p_male']:.2e} on "
            f"{self.parity['images']} images of {self.parity['folder']} (onnxruntime vs the "
            f"checkpoint's PyTorch model; tolerance {self.parity['tolerance']:g})"
        )
        keys = (PREPROCESSING_KEY, INPUTS_KEY, OUTPUTS_KEY, PARITY_KEY, EVAL_TRANSFORM_KEY)
        lines.append(f"metadata (JSON): {', '.join(keys)}")
        return lines


def _step_text(step: dict[str, Any]) -> str:
    if step["op"] == "crop":
        return (
            f"crop: top {step['top']}, left {step['left']}, height {step['height']}, width "
            f"{step['width']} (in a crop of another size: {step['other_sizes']})"
        )
    if step["op"] == "to_float":
        return f"to {step['dtype']}: divide by {step['divide_by']:g} (values {step['range']})"
    if step["op"] == "resize":
        return (
            f"resize to {step['width']}x{step['height']}: {step['interpolation']}, antialias "
            f"{step['antialias']} (on the float values; PIL: {step['pil']})"
        )
    return f"normalize: (x - mean) / std, mean {step['mean']}, std {step['std']}"


def describe_preprocessing(transform: v2.Compose) -> dict[str, Any]:
    """What predict does to an aligned face crop before the model, step by step, read off its
    own transform (GenderPredictor's), so that the description cannot drift from it."""
    steps: list[dict[str, Any]] = []
    source_max = torch.iinfo(torch.uint8).max  # ToImage gives a PIL RGB image's uint8 values
    for step in transform.transforms:
        if isinstance(step, v2.ToImage):
            continue  # (H, W, 3) -> (3, H, W): the layout, stated at the end
        if isinstance(step, FaceCrop):
            if step.face_crop:
                top, left, height, width = crop_box(step.face_crop, ALIGNED_HEIGHT, ALIGNED_WIDTH)
                steps.append(
                    {"op": "crop", "top": top, "left": left, "height": height, "width": width,
                     "other_sizes": f"the box scaled by height/{ALIGNED_HEIGHT} and width/"
                     f"{ALIGNED_WIDTH}, rounded"}
                )  # fmt: skip
        elif isinstance(step, v2.ToDtype):
            dtype = step.dtype if isinstance(step.dtype, torch.dtype) else step.dtype[v2.Image]
            divide_by = source_max if step.scale else 1
            steps.append(
                {"op": "to_float", "dtype": str(dtype).removeprefix("torch."),
                 "divide_by": float(divide_by), "range": [0.0, source_max / divide_by]}
            )  # fmt: skip
        elif isinstance(step, v2.Resize):
            height, width = step.size
            interpolation = v2.InterpolationMode(step.interpolation).value  # enum or its name
            steps.append(
                {"op": "resize", "height": height, "width": width,
                 "interpolation": interpolation, "antialias": bool(step.antialias),
                 "align_corners": False,
                 # torchvision's antialiased resize is PIL's algorithm; on float values PIL
                 # needs one "F" (float32) image per channel.
                 "pil": f"Image.resize(({width}, {height}), Image.{interpolation.upper()}) on "
                 "each channel as a float32 'F' image"}
            )  # fmt: skip
        elif isinstance(step, v2.Normalize):
            steps.append({"op": "normalize", "mean": list(step.mean), "std": list(step.std)})
        else:
            raise TypeError(
                f"export cannot describe predict's transform step {type(step).__name__}: "
                "add it to describe_preprocessing"
            )
    return {
        "input": {"mode": "RGB", "width": ALIGNED_WIDTH, "height": ALIGNED_HEIGHT,
                  "what": "an aligned face crop (CelebA's img_align_celeba framing), as "
                  "predict's face aligner makes it"},
        "steps": steps,
        "layout": "NCHW float32, channels RGB",
    }  # fmt: skip


def _interface(values: Any, max_batch: int) -> list[dict[str, Any]]:
    """Names, shapes (the dynamic axis by name) and element types of a graph's inputs or
    outputs."""
    import onnx

    described = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]
        entry = {
            "name": value.name,
            "shape": shape,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        }
        if shape and isinstance(shape[0], str):
            entry["batch_axis"] = {"name": shape[0], "index": 0, "min": 1, "max": max_batch}
        described.append(entry)
    return described


def check_parity(
    predictor: GenderPredictor, onnx_path: Path, settings: DictConfig
) -> dict[str, Any]:
    """The largest |P(male) difference| between the checkpoint's predictor and the ONNX file's
    on the first ``export.parity_count`` photos of ``export.parity_images``; ParityError above
    ``export.parity_tolerance``."""
    options = settings.export
    folder = Path(options.parity_images).expanduser()
    photos = sorted(p for p in folder.iterdir() if is_photo_name(p)) if folder.is_dir() else []
    photos = photos[: max(int(options.parity_count), 0)]
    if not photos:
        raise ParityError(
            f"no photos to check the export on in {folder} (export.parity_images, "
            f"export.parity_count={options.parity_count}): set them in conf/predict.yaml to a "
            "folder of aligned face crops"
        )
    crops = [load_photo(path, settings.max_pixels) for path in photos]
    exported = GenderPredictor.from_onnx(onnx_path, predictor.batch_size)
    expected, got = predictor.predict(crops), exported.predict(crops)
    worst = float(np.max(np.abs(got.astype(np.float64) - expected)))
    tolerance = float(options.parity_tolerance)
    if not worst <= tolerance:  # NaN fails too
        raise ParityError(
            f"the ONNX graph's P(male) differs from the checkpoint's by up to {worst:.2e} on "
            f"{len(crops)} photos of {folder}, over export.parity_tolerance={tolerance:g} "
            "(conf/predict.yaml): nothing written; try another --opset"
        )
    return {"images": len(crops), "folder": str(folder), "max_abs_diff_p_male": worst,
            "tolerance": tolerance}  # fmt: skip


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    opset: int | None = None,
    force: bool = False,
    settings: DictConfig | None = None,
) -> Export:
    """Write ``output``: input ``images`` (N, 3, S, S) normalised, output ``p_male`` (N,), and
    in its metadata what it is (Export). ``settings``: conf/predict.yaml (default: the file's);
    ``opset`` overrides its ``export.opset``. Refuses to overwrite the checkpoint, or an
    existing file unless ``force``; the file appears complete and checked, or not at all
    (written beside it, then renamed over it)."""
    output = check_output(checkpoint, output, force)
    settings = settings if settings is not None else load_settings()
    opset = opset if opset is not None else int(settings.export.opset)
    # Load, trace and translate, check and write: torch's own step messages (verbose) replaced
    # by one bar.
    with progress(total=3, desc=f"Exporting {output.name}", unit="step") as bar:
        return _export(checkpoint, output, opset, force, settings, bar)


def _export(
    checkpoint: str | Path,
    output: Path,
    opset: int,
    force: bool,
    settings: DictConfig,
    bar: Any,
) -> Export:
    import onnx

    # Predict's own predictor: its model is what is exported, its transform what is described.
    predictor = GenderPredictor.from_checkpoint(checkpoint)
    model = predictor.model
    bar.update()
    eval_transform = predictor.eval_transform
    size = eval_transform["image_size"]
    # The very object predict's tensors() applies (private to the predictor; read, not copied).
    preprocessing = describe_preprocessing(predictor._transform)
    example = torch.zeros(2, 3, size, size)
    max_batch = int(settings.export.max_batch)
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
            dynamic_shapes={"images": {0: torch.export.Dim(BATCH_AXIS, min=1, max=max_batch)}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        bar.update()
        exported = onnx.load(temporary)
        inputs = _interface(exported.graph.input, max_batch)
        outputs = _interface(exported.graph.output, max_batch)
        described = {
            EVAL_TRANSFORM_KEY: json.dumps(
                {
                    key: eval_transform[key]
                    for key in PREDICT_TRANSFORM_KEYS
                    if key in eval_transform
                }
            ),
            BACKBONE_KEY: model.hparams.backbone,
            PREPROCESSING_KEY: json.dumps(preprocessing),
            INPUTS_KEY: json.dumps(inputs),
            OUTPUTS_KEY: json.dumps(outputs),
        }
        for key, value in described.items():
            exported.metadata_props.add(key=key, value=value)
        onnx.save(exported, temporary)
        parity = check_parity(predictor, Path(temporary), settings)
        exported.metadata_props.add(key=PARITY_KEY, value=json.dumps(parity))
        onnx.save(exported, temporary)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp's file is owner-only
        check_output(checkpoint, output, force)  # nothing appeared there meanwhile
        os.replace(temporary, output)  # a symlink at ``output`` is replaced, not its target
        bar.update()
    except OSError as error:  # the disk filled up, the folder went away
        raise OutputRefused(f"cannot write {output}: {error.strerror or error}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return Export(output, inputs, outputs, preprocessing, parity)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celeba_gender.inference.export")
    parser.add_argument("checkpoint")
    parser.add_argument("output", nargs="?", help="default: the checkpoint's name with .onnx")
    parser.add_argument("--opset", type=int, help="default: export.opset in conf/predict.yaml")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    args = parser.parse_args(argv)
    output = args.output or Path(args.checkpoint).with_suffix(ONNX_SUFFIX)
    try:
        made = export_onnx(args.checkpoint, output, args.opset, args.force)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(made.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
