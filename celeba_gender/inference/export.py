"""ONNX export of a trained checkpoint (P(male) out, any batch size), with its evaluation
transform in the file's metadata so predict can use it alone.

    python -m celeba_gender.inference.export outputs/runs/.../checkpoints/best.ckpt [out.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from celeba_gender.data import DataError
from celeba_gender.inference.predictor import (
    BACKBONE_KEY,
    EVAL_TRANSFORM_KEY,
    eval_transform_of,
    load_model,
)


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = 18) -> Path:
    """Write ``output``: input ``images`` (N, 3, S, S) normalised, output ``p_male`` (N,)."""
    import onnx

    model = load_model(checkpoint).eval()
    settings = eval_transform_of(model, checkpoint)
    size = settings["image_size"]
    example = torch.zeros(2, 3, size, size)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(output),
        input_names=["images"],
        output_names=["p_male"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
    )
    exported = onnx.load(str(output))
    for key, value in (
        (EVAL_TRANSFORM_KEY, json.dumps(settings)),
        (BACKBONE_KEY, model.hparams.backbone),
    ):
        exported.metadata_props.add(key=key, value=value)
    onnx.save(exported, str(output))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celeba_gender.inference.export")
    parser.add_argument("checkpoint")
    parser.add_argument("output", nargs="?", help="default: the checkpoint's name with .onnx")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    try:
        path = export_onnx(
            args.checkpoint, args.output or Path(args.checkpoint).with_suffix(".onnx"), args.opset
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
