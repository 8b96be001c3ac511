"""The config schema (celeba_gender/config_schema.py): every shipped config passes it; a value
it does not allow stops train.py before anything runs, with one line naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import celeba_gender.config  # noqa: F401  (resolvers)
from celeba_gender.config_schema import ConfigError, EvalSchema, TrainSchema, validate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides: str, name: str = "config"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("experiment", [None, *_options("experiment")])
def test_every_shipped_config_passes_the_schema(experiment):
    chosen = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for model in _options("model"):
            for treatment in _options("treatment"):
                overrides = [*chosen, f"model={model}", f"treatment={treatment}"]
                small = {"cpu_quick": 112, "first_run": 48}  # their image sizes
                if experiment in small and model == "inception_v3":
                    # Inception-v3 fails below 299 px; said before the run.
                    size = small[experiment]
                    with pytest.raises(ConfigError, match=rf"^data.image_size={size} .* \(299 for"):
                        validate(compose("config", overrides=overrides), TrainSchema)
                    continue
                validate(compose("config", overrides=overrides), TrainSchema)
        for group in ("trainer", "scheduler", "optimizer", "logger", "data", "callbacks"):
            for option in _options(group):
                validate(compose("config", overrides=[*chosen, f"{group}={option}"]))
        validate(compose("eval", overrides=["ckpt_path=x.ckpt"]), EvalSchema)


BAD = [
    ("data.batch_size=abc", "data.batch_size=abc", "an integer >= 1"),
    ("data.batch_size=0", "data.batch_size=0", "an integer >= 1"),
    ("data.batch_size=-8", "data.batch_size=-8", "an integer >= 1"),
    ("data.eval_batch_size=2.5", "data.eval_batch_size=2.5", "an integer >= 1 or null"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0", "an integer >= 1, -1 (no limit) or null"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2", "an integer >= 1, -1 (no limit) or null"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1", "-1 alone trains forever"),
    ("optimizer.lr=-0.001", "optimizer.lr=-0.001", "a finite number > 0"),
    ("optimizer.lr=fast", "optimizer.lr=fast", "a finite number > 0"),
    ("data.split=random", "data.split=random", "one of identity, seed_protocol, official, all"),
    ("data.balance=smote", "data.balance=smote", "one of none, undersample"),
    (
        "data.loader=fast",
        "data.loader=fast",
        "one of cached, per_sample",
    ),  # the data module trusts it
    ("trainer.precision=17", "trainer.precision=17", "16-mixed"),
    ("trainer.precision=fp16", "trainer.precision=fp16", "bf16-mixed"),
    ("treatment.loss=mse", "treatment.loss=mse", "one of bce, ce"),
    ("model.name=resnet9", "model.name=resnet9", "torchvision.models.list_models()"),
    ("monitor=val/accuracy", "monitor=val/accuracy", "val/acc"),
    ("data.split_fractions=[0.9,0.2,0.1]", "data.split_fractions=[0.9, 0.2, 0.1]", "sum"),
    ("mixup_alpha=-1", "mixup_alpha=-1", "a finite number >= 0"),
    ("resume=perhaps", "resume=perhaps", "true or false"),
    ("stop_signals=[SIGSTOP]", "stop_signals=['SIGSTOP']", "SIGTERM"),
]


@pytest.mark.parametrize(("override", "shown", "allowed"), BAD)
def test_a_value_the_schema_does_not_allow_is_named_with_what_is_allowed(override, shown, allowed):
    with pytest.raises(ConfigError) as raised:
        validate(_compose("experiment=smoke", override))
    message = str(raised.value)
    assert message.startswith(f"{shown} is not allowed: expected ")
    assert allowed in message and "\n" not in message


# Values Lightning and the code take as they are: never refused.
GOOD = [
    ("trainer.max_epochs=-1", "+trainer.max_steps=100"),  # Lightning: no epoch limit
    ("trainer.max_epochs=null", "+trainer.max_steps=100"),
    ("trainer.max_epochs=-1", "+trainer.max_time=00:01:00:00"),
    ("trainer.max_epochs=null",),  # Lightning's default (1000 epochs)
    ("trainer.devices='0,1'", "trainer.accelerator=gpu"),
    ("trainer.devices='0,'", "trainer.accelerator=cuda"),
    ("trainer.devices=[0,1]", "trainer.accelerator=gpu"),
    ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"),  # README's DDP on CPU
    ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=auto"),
    ("trainer.devices=auto",),
    ("trainer.devices='2'",),
    ("trainer.precision=16",),
    ("trainer.precision=bf16-mixed",),
    ("+trainer.gradient_clip_val=0",),
    ("+trainer.check_val_every_n_epoch=null",),
    ("+trainer.val_check_interval=0.25",),
    ("+trainer.limit_val_batches=1.0",),
    ("data.split_fractions=[1,0,0]",),
    ("seed=0",),
    ("seed=4294967295",),
    ("optimizer.lr=1",),
    ("model=inception_v3",),
    ("model=inception_v3", "experiment=smoke"),
    ("model=vgg11", "data.image_size=32"),
    ("model=resnet18", "data.image_size=16", "model.min_image_size=16"),
    ("data.face_crop={top:0,left:0,height:500,width:500}",),  # clipped to the frame
    ("data.face_crop=null", "data.augmentations=[]"),
    ("monitor=val/loss", "monitor_mode=min"),
    ("scheduler=cosine", "trainer.max_epochs=3"),
    ("scheduler=onecycle", "trainer.max_epochs=-1", "+trainer.max_steps=50"),
    ("scheduler=onecycle", "trainer.max_epochs=null"),
]


@pytest.mark.parametrize("overrides", GOOD, ids=" ".join)
def test_values_lightning_and_the_code_take_pass(overrides):
    validate(_compose(*overrides))


# Values that pass a conversion but that the run would use otherwise ('no' is a true string),
# or that fail deep in the run (inception at 64 px, a seed numpy refuses), or silently
# misbehave (an infinite learning rate, the checkpoint of the highest loss).
BAD_TOGETHER = [
    (("resume=no",), "resume='no' is not allowed: expected true or false"),
    (("treatment.pretrained=off",), "treatment.pretrained='off' is not allowed"),
    (("data.pin_memory=yes",), "data.pin_memory='yes' is not allowed"),
    (("data.pin_memory=1",), "data.pin_memory=1 is not allowed: expected true or false"),
    (("data.num_workers='8'",), "data.num_workers='8' is not allowed: expected an integer"),
    (("optimizer.lr=inf",), "optimizer.lr=inf is not allowed: expected a finite number > 0"),
    (("mixup_alpha=inf",), "mixup_alpha=inf is not allowed"),
    (("data.std=[inf,1,1]",), "data.std=[inf, 1, 1] is not allowed"),
    (("data.mean=[nan,0,0]",), "data.mean=[nan, 0, 0] is not allowed"),
    (("seed=-1",), "seed=-1 is not allowed: expected an integer >= 0"),
    (
        ("seed=4294967296",),
        "seed=4294967296 is not allowed: expected an integer >= 0 and <= 4294967295",
    ),
    (("data.split_seed=-1",), "data.split_seed=-1 is not allowed"),
    (("trainer.devices='0'",), "trainer.devices='0' is not allowed"),
    (("trainer.devices='abc,def'",), "trainer.devices=abc,def is not allowed"),
    (
        ("model=inception_v3", "data.image_size=64"),
        "data.image_size=64 is not allowed: expected an integer >= model.min_image_size (299",
    ),
    (("model=inception_v3", "model.image_size=64"), "model.image_size=64 is not allowed"),
    (("model=vgg11", "data.image_size=16"), "data.image_size=16 is not allowed"),
    (("monitor=val/loss", "monitor_mode=max"), "monitor_mode=max is not allowed: expected min"),
    (("monitor=val/acc", "monitor_mode=min"), "monitor_mode=min is not allowed: expected max"),
    (
        ("scheduler=cosine", "trainer.max_epochs=-1", "+trainer.max_steps=10"),
        "trainer.max_epochs=-1 is not allowed: expected an integer >= 1 (the scheduler's length",
    ),
    # Built as the data module builds them (a ValueError traceback after the folder was written).
    (
        ("data.face_crop={top:-5,left:0,height:178,width:178}",),
        "data.face_crop={'top': -5, 'left': 0, 'height': 178, 'width': 178} is not allowed",
    ),
    (("data.augmentations=[{name:blur}]",), "data.augmentations=[{'name': 'blur'}] is not"),
    (
        ("data.augmentations=[{name:rotation,degres:15}]",),
        "data.augmentations=[{'name': 'rotation', 'degres': 15}] is not allowed: expected "
        "augmentations celeba_gender/data/transforms.py knows (Augmentation 'rotation'",
    ),
    (("trainer=ddp", "trainer.accelerator=cpu"), "trainer.devices=-1 is not allowed: expected"),
    (("trainer.devices=[0,1]",), "trainer.devices=[0, 1] is not allowed: expected a number of"),
    (("data.split='a\nb'",), "data.split='a\\nb' is not allowed"),  # one line
    # A value given through an interpolation is named where the user set it.
    (("seed=abc",), "seed=abc is not allowed: expected an integer"),
    (("model.image_size=7",), "model.image_size=7 is not allowed: expected an integer >= 8"),
    (("monitor_mode=maximize",), "monitor_mode=maximize is not allowed: expected one of min, max"),
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    BAD_TOGETHER,
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_values_the_run_would_misuse_are_refused_naming_the_key_set(overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate(_compose(*overrides))
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


# Rules the data layer states once (data/sources.py, data/splits.py) and the schema asks: a
# value is refused by both or by neither (one tolerance for the fractions' sum).
ONE_RULE = [
    ("split_fractions", [0.5, 0.3, 0.2000009], True),
    ("split_fractions", [0.5, 0.3, 0.200002], False),  # np.isclose let the data layer take it
    ("split_fractions", [1.2, -0.1, -0.1], False),
    ("csv_columns", {"path": "file", "label": "gender"}, True),  # identity: the default column
    ("csv_columns", {"identity": None}, True),
    ("csv_columns", {"path": "file", "label": "gender", "identity": ""}, False),
    ("csv_columns", {"path": "file", "label": None}, False),
    ("csv_columns", {"path": "file", "label": "gender", "race": "race"}, False),
]


@pytest.mark.parametrize(("key", "value", "allowed"), ONE_RULE, ids=str)
def test_the_schema_asks_the_data_layer_so_both_allow_the_same_values(key, value, allowed):
    from celeba_gender.data.errors import DataError
    from celeba_gender.data.sources import check_csv_columns
    from celeba_gender.data.splits import check_fractions

    check = {"split_fractions": check_fractions, "csv_columns": check_csv_columns}[key]
    cfg = _compose()
    OmegaConf.update(cfg, f"data.{key}", value, merge=False)  # the value as it is, not merged
    if allowed:
        check(value)
        validate(cfg)
        return
    with pytest.raises(DataError, match=f"^data.{key}"):
        check(value)
    with pytest.raises(ConfigError, match=rf"^data.{key}=.* is not allowed: expected "):
        validate(cfg)


def test_keys_a_group_does_not_have_are_skipped_and_its_own_are_checked():
    validate(_compose("optimizer=adam"))  # no momentum: nothing to check
    with pytest.raises(ConfigError, match="optimizer.momentum=1.5"):
        validate(_compose("optimizer=sgd", "optimizer.momentum=1.5"))


ADDED_KEYS_READ = [
    "+trainer.gradient_clip_val=0",  # an argument of the Trainer (_target_)
    "+callbacks.model_checkpoint.save_top_k=2",
    "+logger.csv={_target_: lightning.pytorch.loggers.CSVLogger, save_dir: x}",
    "+trainer.max_steps=4",
    "+run_facts.dropout=model.kwargs.dropout",  # extensible nodes (conf/config.yaml)
    "+model.kwargs.dropout=0.3",
    "+hydra.job.env_set.X=1",
    "+module._recursive_=false",  # what Hydra's instantiate reads under a _target_ node
    "+trainer._convert_=all",
]


@pytest.mark.parametrize("override", ADDED_KEYS_READ)
def test_a_key_added_where_something_reads_it_passes(override):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        validate(compose("config", overrides=[override], return_hydra_config=True))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+sed=1",
            "+sed=1 is not allowed: expected a key something reads (one in conf/, an argument "
            "of a _target_ node, or one under run_facts, model.kwargs, model.scratch_kwargs, "
            "resume_ignore); seed, perhaps.",
        ),
        ("+model.dropout=0.3", "+model.dropout=0.3 is not allowed"),
        ("++treatment.pretrain=true", "+treatment.pretrain=true is not allowed"),
        # Under a _target_ node, but not an argument its class takes (no **kwargs).
        ("+trainer.max_epoch=3", "+trainer.max_epoch=3 is not allowed"),
        ("+module.foo=1", "+module.foo=1 is not allowed"),
    ],
)
def test_a_key_added_that_nothing_reads_is_refused(override, message):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = compose("config", overrides=[override], return_hydra_config=True)
    with pytest.raises(ConfigError) as raised:
        validate(config)
    assert str(raised.value).startswith(message)


def test_the_eval_schema_checks_the_eval_config():
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        validate(_compose("ckpt_path=x.ckpt", "data.batch_size=0", name="eval"), EvalSchema)


def test_a_required_value_not_given_is_one_line_not_a_traceback(run_env, tmp_path):
    with pytest.raises(ConfigError, match=r"^ckpt_path=\?\?\? is not allowed: expected a string"):
        validate(_compose(name="eval"), EvalSchema)
    result = run_script("eval.py", f"hydra.run.dir={tmp_path / 'eval'}", env=run_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: ckpt_path=??? is not allowed: expected a string (required: ckpt_path=...)."
    ]


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("data.batch_size=abc", "data.batch_size=abc"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
        ("trainer.precision=17", "trainer.precision=17"),
        ("resume=no", "resume='no'"),  # text, not false: it would resume
        ("seed=-1", "seed=-1"),  # named as set, not as data.balance_seed (${seed})
        ("+sed=1", "+sed=1"),  # a key nothing reads
    ],
)
def test_train_py_refuses_a_bad_value_in_one_line_before_anything_runs(
    override, shown, run_env, tmp_path
):
    folder = tmp_path / "run"
    result = run_script("train.py", "experiment=smoke", override, f"hydra.run.dir={folder}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {shown} is not allowed: expected " + lines[0].split("expected ")[1]]
    assert not (folder / "metrics.json").exists() and not (folder / ".hydra").exists()


def test_a_sweep_reports_every_bad_job_and_launches_none(run_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "experiment=smoke",
        "model=resnet18,vgg11",
        "data.batch_size=4,abc",
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: job 1 (experiment=smoke model=resnet18 data.batch_size=abc): " in result.stderr
    assert "error: job 3 (experiment=smoke model=vgg11 data.batch_size=abc): " in result.stderr
    assert "job 0 " not in result.stderr and "job 2 " not in result.stderr
    assert not sweep.exists()  # nothing launched, not even the sweep folder


def test_a_sweep_job_that_does_not_compose_is_one_line_and_nothing_is_launched(run_env, tmp_path):
    # Hydra turns a callback's exception into a warning: the error must be the callback's own.
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "experiment=smoke",
        "model=resnet18,resnet9",
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: job 1 (experiment=smoke model=resnet9): "
        "In 'config': Could not find 'model/resnet9'",
        "Nothing was launched.",
    ]
    assert not sweep.exists()


def test_without_the_sweep_check_each_bad_job_says_so_and_the_sweep_goes_on(run_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "~hydra.callbacks.validate_sweep",
        "experiment=smoke",
        "data.batch_size=abc,0",
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    assert result.returncode == 1, result.stderr[-3000:]  # jobs that did not run (the summary)
    assert f"Sweep {sweep}: 0 ok, 2 not run." in result.stderr
    assert "Traceback" not in result.stderr
    for number, value in enumerate(["abc", "0"]):
        folder = next(sweep.glob(f"{number}_*"))
        assert f"{folder}: not run. error: data.batch_size={value} is not allowed" in result.stderr
        assert not (folder / "metrics.json").exists()
