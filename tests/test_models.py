"""Backbone factory, loss heads, pretrained weights without network, safe checkpoint loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from celeba_gender.metrics import binary_metrics
from celeba_gender.models import (
    BCEHead,
    CEHead,
    GenderClassifier,
    PretrainedWeightsUnavailable,
    create_backbone,
    load_classifier,
    model_names,
    pretrained_weights_file,
)
from celeba_gender.models.backbones import split_outputs

REPO = Path(__file__).resolve().parents[1]


def _module(model: str, **overrides) -> GenderClassifier:
    """The GenderClassifier that conf/ builds for ``model`` (config.yaml's ``module`` node)."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}"])
    return instantiate(cfg.module, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", model_names())
def test_every_backbone_gives_the_heads_outputs(name):
    size = 299 if name == "inception_v3" else 64
    aux = name in ("googlenet", "inception_v3")
    for loss, outputs in (("bce", 1), ("ce", 2)):
        model = _module(name, loss=loss).net
        images = torch.randn(2, 3, size, size)
        model.train()
        main, aux_logits = split_outputs(model(images))
        assert main.shape == (2, outputs)
        assert len(aux_logits) == {"googlenet": 2, "inception_v3": 1}.get(name, 0)
        assert all(a.shape == (2, outputs) for a in aux_logits)
        model.eval()
        with torch.no_grad():
            main, aux_logits = split_outputs(model(images))
        assert main.shape == (2, outputs) and aux_logits == []
        if not aux:
            break  # one head size is enough for the plain backbones


def test_bce_and_ce_heads_give_the_same_metrics_on_the_same_predictions():
    torch.manual_seed(0)
    logit = torch.randn(64) * 2
    labels = torch.randint(0, 2, (64,))
    bce, ce = BCEHead(), CEHead()
    # The same prediction in each head's form: sigmoid(z) == softmax([0, z])[1].
    p_bce = bce.male_probability(logit.unsqueeze(1))
    p_ce = ce.male_probability(torch.stack([torch.zeros(64), logit], dim=1))
    assert torch.allclose(p_bce, p_ce, atol=1e-6)
    results = [
        {k: float(v) for k, v in binary_metrics(probability, labels).items()}
        for probability in (p_bce, p_ce)
    ]
    assert results[0] == pytest.approx(results[1])
    predicted_male = (p_bce > 0.5).long()  # torchmetrics: male when p > threshold
    assert results[0]["acc"] == pytest.approx(float((predicted_male == labels).float().mean()))
    assert results[0]["recall"] == pytest.approx(float(predicted_male[labels == 1].float().mean()))


@pytest.mark.parametrize(
    "head", [BCEHead(), BCEHead(pos_weight=3.0), CEHead(), CEHead(class_weights=[0.7, 1.6])]
)
def test_per_image_losses_average_to_the_heads_loss(head):
    """Evaluation keeps losses per image (to count DDP's repeated images once): their weighted
    mean over any subset must be the head's loss of that subset."""
    torch.manual_seed(0)
    logits = torch.randn(16, head.num_outputs) * 3
    labels = torch.randint(0, 2, (16,))
    losses, weights = head.image_losses(logits, labels)
    for subset in (slice(None), slice(3, 11)):
        expected = head.loss(logits[subset], labels[subset])
        assert float(losses[subset].sum() / weights[subset].sum()) == pytest.approx(float(expected))


def test_head_losses_use_the_class_weights():
    logits = torch.tensor([[0.3], [-1.0]])
    labels = torch.tensor([1, 0])
    plain, weighted = BCEHead().loss(logits, labels), BCEHead(pos_weight=3.0).loss(logits, labels)
    assert weighted > plain
    ce_logits = torch.tensor([[0.0, 0.3], [0.0, -1.0]])
    balanced = CEHead(class_weights=[1.0, 1.0]).loss(ce_logits, labels)
    assert torch.isclose(balanced, CEHead().loss(ce_logits, labels))


def test_pretrained_weights_load_from_the_torchvision_cache_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = pretrained_weights_file("resnet18")
    assert expected.folder == tmp_path / "hub" / "checkpoints"
    reference = torchvision.models.resnet18(weights=None)
    expected.folder.mkdir(parents=True)
    torch.save(reference.state_dict(), expected.path)

    model = create_backbone("resnet18", 1, pretrained=True, allow_download=False)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 1  # the ImageNet head was replaced


def test_missing_pretrained_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        create_backbone("vgg19", 1, pretrained=True, allow_download=False)
    message = str(caught.value)
    assert "vgg19-dcbb9e9d.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


class _Payload:
    """Unpickling this would run code: a safe loader must refuse it."""

    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoints_load_without_executing_pickled_code(tmp_path):
    model = GenderClassifier("resnet18", "ce", pretrained=False)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    safe = tmp_path / "safe.ckpt"
    torch.save(checkpoint, safe)
    restored = load_classifier(str(safe))
    assert torch.equal(restored.net.fc.weight, model.net.fc.weight)
    assert restored.hparams.loss == "ce"

    hostile = tmp_path / "hostile.ckpt"
    torch.save({**checkpoint, "extra": _Payload()}, hostile)
    with pytest.raises(pickle.UnpicklingError):
        load_classifier(str(hostile))


def test_flip_test_time_augmentation_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = GenderClassifier("resnet18", "bce", pretrained=False, flip_tta=True).eval()
    images = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        averaged = model(images)
        assert torch.allclose(averaged, model(images.flip(-1)), atol=1e-6)  # mirror-invariant
        model.hparams.flip_tta = False
        single, mirrored = model(images), model(images.flip(-1))
    assert not torch.allclose(single, mirrored, atol=1e-4)
    assert torch.allclose(averaged, (single + mirrored) / 2, atol=1e-6)


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_mixup_trains_on_blended_images_with_the_same_blend_of_losses(loss):
    torch.manual_seed(0)
    model = GenderClassifier("resnet18", loss, pretrained=False, mixup_alpha=0.4).eval()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    torch.manual_seed(1)
    loss_value = model.training_step((images, labels, torch.arange(4)), 0)
    # The same draws by hand: the blend weight, then the partners.
    torch.manual_seed(1)
    mix = float(torch.distributions.Beta(0.4, 0.4).sample())
    partners = torch.randperm(4)
    with torch.no_grad():
        logits = model.net(mix * images + (1 - mix) * images[partners])
    expected = mix * model.head.loss(logits, labels) + (1 - mix) * model.head.loss(
        logits, labels[partners]
    )
    assert 0 < mix < 1 and not torch.equal(partners, torch.arange(4))
    assert float(loss_value) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_attribute_targets_add_logits_and_a_weighted_loss_but_leave_p_male_alone(loss, tmp_path):
    torch.manual_seed(0)
    names = ["Smiling", "Eyeglasses", "Bald"]
    model = GenderClassifier(
        "resnet18", loss, pretrained=False, attribute_targets=names, attribute_loss_weight=0.5
    ).eval()
    width = model.head.num_outputs
    assert model.net.fc.out_features == width + 3
    images, labels, rows = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0]), torch.arange(4)
    with pytest.raises(RuntimeError, match="no attribute table"):
        model.training_step((images, labels, rows), 0)
    table = torch.tensor([[1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]]).float()
    with pytest.raises(ValueError, match="3 attribute columns"):
        model.set_attribute_table(table[:, :2])
    model.set_attribute_table(table)
    rows = torch.tensor([4, 0, 2, 3])  # batches carry index rows, not positions
    loss_value = model.training_step((images, labels, rows), 0)
    with torch.no_grad():
        logits = model.net(images)
        probability = model(images)
    expected = model.head.loss(logits[:, :width], labels) + 0.5 * (
        torch.nn.functional.binary_cross_entropy_with_logits(logits[:, width:], table[rows])
    )
    assert float(loss_value) == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose(probability, model.head.male_probability(logits[:, :width]))

    # The names travel in the checkpoint; the table (training data) does not.
    path = tmp_path / "multi_task.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    restored = load_classifier(str(path)).eval()
    assert restored.attribute_targets == names and len(restored.attribute_table) == 0
    with torch.no_grad():
        assert torch.allclose(restored(images), probability)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_configs_build_an_optimizer_that_steps_on_cpu(name, fused):
    config = OmegaConf.load(REPO / "conf" / "optimizer" / f"{name}.yaml")
    config.fused = fused
    parameter = torch.nn.Parameter(torch.ones(4))
    parameter.grad = torch.full((4,), 0.5)
    optimizer = instantiate(config)(params=[parameter])
    optimizer.step()
    assert optimizer.defaults["fused"] is fused
    assert bool((parameter < 1).all())  # a descent step on every element


def test_auxiliary_heads_learn_gender_only_when_attributes_are_targets():
    torch.manual_seed(0)
    model = _module("googlenet", loss="bce", attribute_targets=["Smiling"])
    assert model.net.fc.out_features == 2
    assert model.net.aux1.fc2.out_features == model.net.aux2.fc2.out_features == 1
    model.set_attribute_table(torch.tensor([[1.0], [0.0]]))
    loss = model.training_step(
        (torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), torch.arange(2)), 0
    )
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("name", "inference_params"),
    # torchvision's own counts of the ImageNet models less their 1000-way heads, plus ours.
    [("googlenet", 6_624_904 - 1_025_000 + 1_025), ("resnet18", 11_689_512 - 513_000 + 513)],
)
def test_parameter_counts_leave_out_training_only_auxiliary_heads(name, inference_params):
    model = _module(name, loss="bce")
    assert model.parameter_count(inference=True) == inference_params
    assert model.parameter_count(inference=False) == sum(p.numel() for p in model.net.parameters())
    if name == "googlenet":  # two auxiliary classifiers, ~2.2 M parameters each
        assert model.parameter_count(inference=False) > inference_params + 4_000_000


def test_auroc_of_one_class_is_undefined_not_zero():
    probability = torch.tensor([0.2, 0.7, 0.9])
    one_class = binary_metrics(probability, torch.tensor([1, 1, 1]))
    assert torch.isnan(one_class["auroc"])
    assert float(one_class["acc"]) == pytest.approx(2 / 3)
    assert float(binary_metrics(probability, torch.tensor([0, 1, 1]))["auroc"]) == 1.0


@pytest.mark.parametrize("head", [BCEHead(pos_weight=3.0), CEHead(class_weights=[0.7, 1.6])])
def test_per_image_losses_work_in_half_precision(head):
    """A bf16-true run casts the heads' weight buffers: evaluation must still compute."""
    head = head.to(torch.bfloat16)
    logits = torch.randn(4, head.num_outputs, dtype=torch.bfloat16)
    losses, weights = head.image_losses(logits, torch.tensor([0, 1, 1, 0]))
    assert losses.dtype == weights.dtype == torch.float32 and bool(torch.isfinite(losses).all())


def test_checkpoints_from_before_the_module_config_still_load(tmp_path):
    """Checkpoints written before the model came from conf's module node: a scheduler setting
    the constructor no longer takes, and GoogLeNet built without its auxiliary heads."""
    torch.manual_seed(0)
    old = create_backbone(
        "googlenet", 1, pretrained=False, kwargs={"aux_logits": False, "init_weights": True}
    )
    hparams = {"backbone": "googlenet", "loss": "bce", "pretrained": False}
    hparams.update(aux_loss_weight=0.0, scheduler_interval="epoch", flip_tta=False)
    state = {f"net.{k}": v for k, v in old.state_dict().items()}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    restored = load_classifier(str(path))
    assert restored.net.aux1 is None
    # Without the model config's arguments too: no auxiliary heads unless they are trained.
    assert create_backbone("googlenet", 1, pretrained=False, aux_heads=False).aux1 is None
    assert torch.equal(restored.net.fc.weight, old.fc.weight)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_pretrained_inception_family_without_auxiliary_loss_and_its_checkpoint(
    name, tmp_path, monkeypatch
):
    """torchvision's weights come with the auxiliary heads and transform_input=True: a model
    trained without the heads' loss drops them, and its checkpoint rebuilds the same network
    (same outputs) without the weights file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None, aux_logits=True, init_weights=True)
    expected = pretrained_weights_file(name)
    expected.folder.mkdir(parents=True)
    torch.save(reference.state_dict(), expected.path)

    model = _module(name, loss="bce", pretrained=True, aux_loss_weight=0.0).eval()
    assert model.net.transform_input and model.parameter_count(inference=False) == (
        model.parameter_count(inference=True)
    )
    assert [m for m in ("aux1", "aux2", "AuxLogits") if getattr(model.net, m, None)] == []
    checkpoint = tmp_path / "run.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, checkpoint
    )
    expected.path.unlink()  # a checkpoint needs no weights file
    restored = load_classifier(str(checkpoint)).eval()
    images = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        assert torch.allclose(restored(images), model(images), atol=1e-6)
