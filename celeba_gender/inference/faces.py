"""Find faces in a photo and turn each into a CelebA-style aligned crop.

Detector: MTCNN (facenet-pytorch), whose weights ship inside its wheel, so nothing downloads.
It gives a box and five landmarks (eyes, nose, mouth corners) per face, which is what CelebA's
own alignment used; OpenCV's Haar cascades (the other offline option) give boxes only, so eyes
would need a second, weaker cascade, and they miss rotated and profile faces. facenet-pytorch
2.5.3 comes with the predict extra. MTCNN raises on a photo narrower than its smallest face;
``find`` gives such a photo no face instead.

Alignment: a similarity transform (rotation, uniform scale, shift; OpenCV's least-squares fit)
maps the detected landmarks onto where MTCNN finds them in img_align_celeba (the template in
conf/predict.yaml, measured on the subset), so the crop has CelebA's eye level, face size and
position, in its 178x218 frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from celeba_gender.config import CONFIG_DIR
from celeba_gender.data.transforms import ALIGNED_HEIGHT, ALIGNED_WIDTH

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class DetectorUnavailable(Exception):
    """facenet-pytorch is not installed."""


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the photo's pixels
    score: float
    landmarks: np.ndarray  # (5, 2) x, y in the photo, in LANDMARKS order
    crop: Image.Image  # aligned 178x218


class FaceAligner:
    def __init__(
        self,
        template: dict[str, Sequence[float]],
        fit_landmarks: Sequence[str] = ("left_eye", "right_eye", "mouth_left", "mouth_right"),
        min_face_size: int = 20,
        min_score: float = 0.9,
        device: str = "cpu",
    ) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            raise DetectorUnavailable(
                "Face detection needs facenet-pytorch: `make setup`, or "
                "`pip install 'celeba-gender[predict]'` (facenet-pytorch 2.5.3). "
                "Or pass detect=false for photos that are already aligned CelebA crops."
            ) from None
        self.detector = MTCNN(keep_all=True, min_face_size=min_face_size, device=device)
        self.min_face_size = min_face_size
        self.min_score = min_score
        self.fit_index = [LANDMARKS.index(name) for name in fit_landmarks]
        self.template = np.array([template[name] for name in LANDMARKS], dtype=np.float32)

    @classmethod
    def from_config(cls, alignment: Mapping | None = None, device: str = "cpu") -> FaceAligner:
        """From predict's ``alignment`` settings (default: those of conf/predict.yaml)."""
        if alignment is None:
            alignment = OmegaConf.load(CONFIG_DIR / "predict.yaml").alignment
        if OmegaConf.is_config(alignment):
            alignment = OmegaConf.to_container(alignment, resolve=True)
        return cls(
            alignment["template"],
            alignment["fit_landmarks"],
            alignment["min_face_size"],
            alignment["min_score"],
            device,
        )

    @torch.inference_mode()
    def find(self, photo: Image.Image) -> list[Face]:
        """Every face above ``min_score``, largest first, each with its aligned crop. A photo
        narrower than ``min_face_size`` has none (MTCNN would raise on it)."""
        if min(photo.size) < self.min_face_size:
            return []
        boxes, scores, landmarks = self.detector.detect(photo, landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, score, points in zip(boxes, scores, landmarks, strict=True):
            if score < self.min_score:
                continue
            points = np.asarray(points, dtype=np.float32)
            faces.append(
                Face(
                    box=tuple(float(v) for v in box),
                    score=float(score),
                    landmarks=points,
                    crop=self.align(photo, points),
                )
            )
        return sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    def align(self, photo: Image.Image, landmarks: np.ndarray) -> Image.Image:
        """The 178x218 crop whose landmarks sit on the template (edges repeated beyond the
        photo, as the aligned CelebA images show real surroundings rather than black)."""
        matrix, _ = cv2.estimateAffinePartial2D(
            landmarks[self.fit_index], self.template[self.fit_index], method=cv2.LMEDS
        )
        if matrix is None:  # degenerate landmarks: fall back to the eyes only
            matrix, _ = cv2.estimateAffinePartial2D(landmarks[:2], self.template[:2])
        scale = _scale(matrix)
        if scale < 1:
            # Shrink with an antialiasing filter first, so the warp itself is ~1:1.
            width, height = photo.size
            photo = photo.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))),
                Image.Resampling.LANCZOS,
            )
            matrix = matrix.copy()
            matrix[:, :2] /= scale
        aligned = cv2.warpAffine(
            np.asarray(photo),
            matrix,
            (ALIGNED_WIDTH, ALIGNED_HEIGHT),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return Image.fromarray(aligned)


def _scale(matrix: np.ndarray) -> float:
    return float(np.hypot(matrix[0, 0], matrix[0, 1]))
