"""The private Lightning, Hydra, submitit and TensorBoard names the project uses
(celeba_gender/library_internals.py), checked against the installed versions: a library that
renames one fails here, by name."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import REPO
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader, TensorDataset

from celeba_gender.library_internals import (
    HYDRA_NAMES,
    LIGHTNING_INSTANCE_NAMES,
    LIGHTNING_NAMES,
    SUBMITIT_NAMES,
    TENSORBOARD_NAMES,
    LibraryChanged,
    batches_ready,
    expand_sweep,
    private,
    require_attribute,
    should_accumulate,
    submitit_cluster,
    wandb_run_started,
)

NAMES = HYDRA_NAMES + LIGHTNING_NAMES + SUBMITIT_NAMES + TENSORBOARD_NAMES


@pytest.mark.parametrize(("module", "attribute"), NAMES)
def test_every_private_name_used_exists_in_the_installed_library(module, attribute):
    found = private(module, attribute)  # LibraryChanged when it is gone
    # A method or class, or a setting.
    assert callable(found) or isinstance(found, int | float | str)


@pytest.mark.parametrize(("module", "attribute"), LIGHTNING_INSTANCE_NAMES)
def test_every_private_instance_attribute_used_exists_on_a_new_instance(module, attribute):
    if attribute.startswith("WandbLogger."):
        pytest.importorskip("wandb")  # celeba-gender[loggers]
    instance = private(module, attribute.rsplit(".", 1)[0])()  # no run, no process group
    require_attribute(instance, (module, attribute))  # LibraryChanged when it is gone


def test_a_missing_instance_attribute_is_one_message_naming_it():
    with pytest.raises(LibraryChanged, match=r"lightning.pytorch.strategies.ddp.DDPStrategy.gone "):
        require_attribute(object(), ("lightning.pytorch.strategies.ddp", "DDPStrategy.gone"))


def test_a_plugin_is_named_by_the_distribution_to_install():
    module = "hydra_plugins.hydra_submitit_launcher.submitit_launcher"
    with pytest.raises(LibraryChanged, match=r"installed hydra-submitit-launcher:"):
        private(module, "BaseSubmititLauncher.gone")


def test_the_submitit_cluster_of_each_launcher():
    from celeba_gender.training.launchers import LocalJobLauncher, SlurmJobLauncher

    assert (submitit_cluster(LocalJobLauncher), submitit_cluster(SlurmJobLauncher)) == (
        "local",
        "slurm",
    )


def test_a_wandb_logger_has_no_run_until_its_experiment_is_opened():
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    assert not wandb_run_started(WandbLogger(offline=True))


def test_a_missing_private_name_is_one_message_naming_it():
    with pytest.raises(LibraryChanged, match=r"lightning.pytorch.loops.fit_loop._FitLoop.gone "):
        private("lightning.pytorch.loops.fit_loop", "_FitLoop.gone")


def test_a_sweep_expands_as_hydras_basic_sweeper_runs_it():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        jobs = expand_sweep(["model=resnet18,vgg11", "seed=1,2", "trainer.max_epochs=3"], loader)
    assert jobs == [
        ["model=resnet18", "seed=1", "trainer.max_epochs=3"],
        ["model=resnet18", "seed=2", "trainer.max_epochs=3"],
        ["model=vgg11", "seed=1", "trainer.max_epochs=3"],
        ["model=vgg11", "seed=2", "trainer.max_epochs=3"],
    ]


def test_should_accumulate_is_true_inside_an_accumulation_window():
    seen: list[bool] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(should_accumulate(trainer))

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: list, index: int) -> torch.Tensor:
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_epochs=1, accumulate_grad_batches=2, callbacks=[Record()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2))
    assert seen == [True, False, True, False]


def test_batches_ready_counts_the_epochs_earlier_batches():
    """What the data module seeds a training batch's augmentation with."""
    seen: list[tuple[int, int]] = []

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def on_after_batch_transfer(self, batch: list, dataloader_idx: int) -> list:
            if self.trainer.training:
                seen.append((self.trainer.current_epoch, batches_ready(self.trainer)))
            return batch

        def training_step(self, batch: list, index: int) -> torch.Tensor:
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2))
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
