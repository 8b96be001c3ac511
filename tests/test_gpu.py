"""GPU paths of the data pipeline; skipped where no CUDA device is present."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from celeba_gender.data import IMAGENET_MEAN, IMAGENET_STD, CelebADataModule
from celeba_gender.data.cache import decode_rgb
from celeba_gender.data.transforms import BatchTransform

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
FACE = {"top": 30, "left": 0, "height": 178, "width": 178}


def test_batch_transform_on_the_gpu_matches_the_cpu(subset_root):
    photos = sorted((subset_root / "img_align_celeba").glob("0*.jpg"))[:16]
    batch = torch.from_numpy(np.stack([decode_rgb(p, 218, 178) for p in photos]))
    augment = [{"name": "horizontal_flip"}, {"name": "rotation", "degrees": 45}]
    transform = BatchTransform(224, FACE, augment, IMAGENET_MEAN, IMAGENET_STD)
    for train in (False, True):
        torch.manual_seed(0)
        on_cpu = transform(batch, train)
        torch.manual_seed(0)
        on_gpu = transform.to("cuda")(batch.cuda(), train)
        transform.to("cpu")
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-3)


class _Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 2),
        )
        self.devices: list[str] = []

    def training_step(self, batch, batch_idx):
        images, labels, _ = batch
        self.devices.append(images.device.type)
        return torch.nn.functional.cross_entropy(self.net(images), labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_cached_loader_feeds_gpu_batches_under_mixed_precision(subset_root, cache_dir, precision):
    module = CelebADataModule(
        subset_root,
        image_size=64,
        face_crop=FACE,
        cache_dir=cache_dir,
        augmentations=[{"name": "rotation", "degrees": 45}],
        num_workers=0,
    )
    probe = _Probe()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_train_batches=5,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(probe, datamodule=module)
    assert probe.devices == ["cuda"] * 5
