"""Where MTCNN finds the five landmarks in img_align_celeba: the alignment template.

predict.py maps every detected face onto these points (conf/predict.yaml alignment.template),
so its crops have CelebA's framing as this detector sees it. Median over the first N images:

    python benchmarks/alignment_template.py [--root DIR] [--images 300]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from celeba_gender.data.annotations import detect_layout
from celeba_gender.inference.faces import LANDMARKS

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celeba-subset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("CELEBA_ROOT", str(DEFAULT_ROOT)))
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    from facenet_pytorch import MTCNN

    detector = MTCNN(keep_all=True)
    image_dir = detect_layout(args.root).image_dir
    points, missed = [], 0
    for path in sorted(image_dir.glob("*.jpg"))[: args.images]:
        _, scores, landmarks = detector.detect(Image.open(path).convert("RGB"), landmarks=True)
        if scores is None:
            missed += 1
            continue
        points.append(np.asarray(landmarks[int(np.argmax(scores))], dtype=float))
    points = np.stack(points)
    median, spread = np.median(points, 0), points.std(0)
    print(f"{len(points)} faces ({missed} images without one); median (x, y) and std:")
    template = {name: [round(float(v), 1) for v in median[i]] for i, name in enumerate(LANDMARKS)}
    for i, name in enumerate(LANDMARKS):
        print(f"  {name:12s} {template[name]}  std {np.round(spread[i], 1).tolist()}")
    print(json.dumps(template))


if __name__ == "__main__":
    main()
