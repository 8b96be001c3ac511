"""Face sets beyond CelebA's layout (celeba_gender/data/sources.py): a folder per class and a
CSV of path,label[,identity], made from the real CelebA subset, read, split, trained on and
evaluated through the real entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import forked_python
import pandas as pd
import pytest
from conftest import run_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import celeba_gender.config  # noqa: F401  (resolvers)
from celeba_gender.config_schema import ConfigError, EvalSchema, TrainSchema, validate
from celeba_gender.data import CelebADataModule, DataError, build_index
from celeba_gender.data.annotations import AnnotationWarning, read_name_value_file
from celeba_gender.data.index import MISSING
from celeba_gender.training.resume import ADDED_SETTINGS

REPO = Path(__file__).resolve().parents[1]
IMAGES = 240  # per copy: a real split and a smoke training in seconds


@dataclass
class Sources:
    """An image folder copy and a CSV copy of the same subset images, with their truth."""

    folder: Path  # female/, male/; odd-numbered images in <class>/<celebrity>/
    csv: Path  # path,label,identity (+ an extra column), images under img/
    male: dict[str, int]  # image name -> CelebA's Male (0/1)
    identity: dict[str, int]  # image name -> CelebA identity


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # no copy of the bytes: the tmp folder stays small
    except OSError:
        shutil.copy(source, target)


@pytest.fixture(scope="module")
def sources(subset_root, subset_attributes, tmp_path_factory) -> Sources:
    names = sorted(
        p.name for p in (subset_root / "img_align_celeba").iterdir() if "(" not in p.name
    )
    names = names[:IMAGES]
    identities = read_name_value_file(subset_root / "Anno" / "identity_CelebA.txt", "identity")
    male = {name: int(subset_attributes.loc[name, "Male"]) for name in names}
    identity = {name: int(identities[name]) for name in names}
    base = tmp_path_factory.mktemp("sources")
    folder = base / "faces"
    for number, name in enumerate(names):
        person = f"{identity[name]}/" if number % 2 else ""
        _link(
            subset_root / "img_align_celeba" / name,
            folder / ("male" if male[name] else "female") / f"{person}{name}",
        )
    rows = ["path,label,age,identity"]
    for number, name in enumerate(names):
        # FairFace writes Male/Female; 0/1 and any case are accepted too.
        label = ("Female", "MALE", "0", "1")[male[name] + 2 * (number % 2)]
        rows.append(f"img/{name},{label},{20 + number % 50},{identity[name]}")
        _link(subset_root / "img_align_celeba" / name, base / "table" / "img" / name)
    csv = base / "table" / "faces.csv"
    csv.write_text("\n".join(rows) + "\n")
    return Sources(folder=folder, csv=csv, male=male, identity=identity)


def _module(root: Path, cache_dir: Path, **settings) -> CelebADataModule:
    return CelebADataModule(root, loader="per_sample", cache_dir=cache_dir, **settings)


# ----------------------------------------------------------------------------- reading
def test_an_image_folder_reads_labels_from_class_folders_and_identities_from_person_folders(
    sources, cache_dir
):
    index = build_index(sources.folder, cache_dir)
    images = index.images
    assert index.layout.name == "image_folder" and len(images) == IMAGES
    base = images["file"].map(lambda file: file.rsplit("/", 1)[-1])
    assert images["male"].tolist() == [sources.male[name] for name in base]
    assert (images["file_name"] == images["file"]).all()  # relative paths, as listed
    in_person_folder = images["file"].str.count("/") == 2
    assert in_person_folder.sum() == IMAGES // 2
    assert (images.loc[~in_person_folder, "identity"] == MISSING).all()
    # One code per person folder, and the folders are CelebA's celebrities.
    known = images[in_person_folder]
    celebrity = base[in_person_folder].map(sources.identity)
    assert (known.groupby("identity").apply(lambda g: celebrity[g.index].nunique()) == 1).all()
    assert known["identity"].nunique() == celebrity.nunique()
    assert index.report["without_identity"] == IMAGES // 2
    assert index.attributes == []


def test_a_csv_reads_paths_labels_any_case_and_identities(sources, cache_dir):
    index = build_index(sources.csv, cache_dir)
    images = index.images
    assert index.layout.name == "csv" and len(images) == IMAGES
    names = images["file_name"].str.removeprefix("img/")
    assert images["file_name"].str.startswith("img/").all()
    assert images["male"].tolist() == [sources.male[name] for name in names]
    celebrity = names.map(sources.identity)
    assert (images.groupby("identity").apply(lambda g: celebrity[g.index].nunique()) == 1).all()
    assert images["identity"].nunique() == celebrity.nunique()
    assert index.report["images_listed"] == IMAGES and index.report["listed_but_absent"] == 0


def test_a_fairface_style_csv_with_its_own_column_names_and_no_identity(
    sources, cache_dir, tmp_path
):
    table = pd.read_csv(sources.csv, dtype=str)
    gender = {"Female": "Female", "MALE": "Male", "0": "Female", "1": "Male"}
    fairface = pd.DataFrame(
        {
            "file": [str(sources.csv.parent / path) for path in table["path"]],  # absolute
            "age": table["age"],
            "gender": table["label"].map(gender),
            "race": "unknown",
        }
    )
    gone = pd.DataFrame({"file": [str(tmp_path / "gone.jpg")], "age": ["1"], "gender": ["Male"]})
    fairface = pd.concat([fairface, gone.assign(race="x")])
    path = tmp_path / "train_labels.csv"
    fairface.to_csv(path, index=False)
    module = _module(path, cache_dir, csv_columns={"path": "file", "label": "gender"})
    summary = module.summary()
    assert summary["images_usable"] == len(fairface) - 1 == IMAGES
    assert module.index.images["male"].sum() == sum(sources.male.values())
    assert module.index.images["file_name"].str.startswith(str(sources.csv.parent)).all()
    assert summary["listed_but_absent"] == 1 and summary["absent_files"] == [
        str(tmp_path / "gone.jpg")
    ]
    assert summary["without_identity"] == summary["images_usable"]
    assert summary["identity_disjoint"] is False
    assert (
        f"{summary['images_usable']} of {summary['images_usable']} images have no identity"
        in (summary["identity_note"])
    )
    assert "data.csv_columns.identity" in summary["identity_note"]


def test_duplicates_conflicting_labels_broken_and_stray_files_of_an_image_folder(
    subset_root, cache_dir, tmp_path
):
    names = sorted(
        p.name for p in (subset_root / "img_align_celeba").iterdir() if "(" not in p.name
    )
    names = names[:8]
    source = subset_root / "img_align_celeba"
    root = tmp_path / "faces"
    for name in names[:3]:
        _link(source / name, root / "Female" / name)  # any case matches class 'female'
    for name in names[3:6]:
        _link(source / name, root / "male" / "p1" / name)
    _link(source / names[0], root / "male" / "same.jpg")  # the same bytes labelled male
    _link(source / names[4], root / "male" / "p2" / "copy.jpg")  # a copy, same label
    (root / "male" / "broken.jpg").write_bytes((source / names[6]).read_bytes()[:500])
    (root / "male" / "notes.txt").write_text("not an image\n")
    (root / "male" / ".hidden.jpg").write_bytes(b"")
    _link(source / names[7], root / "unsorted" / names[7])
    index = build_index(root, cache_dir)
    report = index.report
    assert set(report["conflicting_labels"]) == {f"Female/{names[0]}", "male/same.jpg"}
    assert "labelled male, same bytes as Female/" in report["conflicting_labels"]["male/same.jpg"]
    assert report["duplicates"] == {"male/p2/copy.jpg": f"copy of male/p1/{names[4]} (same bytes)"}
    assert list(report["unreadable"]) == ["male/broken.jpg"]
    assert report["annotation_files"]["labels"]["not_image_names"] == ["male/notes.txt"]
    assert list(report["ignored_files"]) == [str(root / "unsorted")]
    assert sorted(index.images["file"]) == [
        f"Female/{names[1]}",
        f"Female/{names[2]}",
        *[f"male/p1/{name}" for name in names[3:6]],
    ]


# ----------------------------------------------------------------------------- splits
def test_the_identity_split_of_a_csv_with_identities_is_identity_disjoint(sources, cache_dir):
    module = _module(sources.csv, cache_dir)
    summary = module.summary()
    assert summary["identity_disjoint"] is True and summary["identity_note"] is None
    names = module.index.images["file_name"].str.removeprefix("img/")
    celebrities = {
        part: set(names.iloc[rows].map(sources.identity)) for part, rows in module.parts.items()
    }
    assert not celebrities["train"] & celebrities["test"]
    assert not celebrities["train"] & celebrities["val"]
    assert not celebrities["val"] & celebrities["test"]
    assert all(len(rows) for rows in module.parts.values())


def test_images_without_identity_split_one_by_one_and_the_report_says_so(sources, cache_dir):
    module = _module(sources.folder, cache_dir)
    summary = module.summary()
    assert summary["shared_identities"] == {"train-val": 0, "train-test": 0, "val-test": 0}
    assert summary["identity_disjoint"] is False
    assert summary["identity_note"] == (
        f"{IMAGES // 2} of {IMAGES} images have no identity: the split keeps known identities "
        "apart but cannot keep unknown ones apart; give person folders "
        "(<class>/<person>/image) for an identity-disjoint split."
    )
    assert sum(part["images"] for part in summary["parts"].values()) == IMAGES
    assert summary["parts"]["test"]["images"] > 0


def test_attribute_targets_on_a_source_without_attributes_is_one_clear_error(sources, cache_dir):
    module = _module(sources.folder, cache_dir)
    assert module.attribute_names([]) == []
    for requested in (["Young"], ["all"]):
        with pytest.raises(
            DataError, match=r"needs CelebA's attribute file.*data.source=image_folder copy"
        ):
            module.attribute_names(requested)


# ----------------------------------------------------------------------------- bad input
HEADER = "path,label,identity\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"faces.csv is empty: expected a header row"),
        ("\n\n", r"faces.csv is empty"),
        (HEADER, r"has a header \(line 1\) but no rows"),
        ("img/a.jpg,male,1\n", r"has no header row: line 1 is a row \(img/a.jpg,male,1\)"),
        (
            "file,gender,race\nimg/a.jpg,male,x\n",
            r"no column 'path' for the image path \(data.csv_columns; its columns are: file, "
            r"gender, race\)\. Name the column to use: data.csv_columns.path=<column>",
        ),
        (
            HEADER + "img/a.jpg,male,1\nimg/b.jpg,man,2\n",
            r"faces.csv, line 3 \(img/b.jpg\), column 'label': 'man' is not a label; expected "
            r"female or male \(any case; data.class_names\), or 0 or 1\.",
        ),
        (
            HEADER + "img/a.jpg,male,1\n\n./img/a.jpg,female,1\n",
            r"\./img/a\.jpg is listed twice with different labels: line 2 and line 4\. Which is "
            r"right\?",
        ),
        (
            HEADER + "img/a.jpg,male,1\nimg/a.jpg,male,2\n",
            r"listed twice with different identities: line 2 and line 3",
        ),
        (HEADER + "img/a.jpg,male\n", r"line 2: 2 fields, the header \(line 1\) has 3"),
        (HEADER + ",male,1\n", r"line 2, column 'path': no path"),
        (HEADER + 'img/a.jpg,"male,1\n', r"faces.csv, line 2: not valid CSV"),
    ],
)
def test_a_bad_csv_is_one_error_naming_file_line_and_column(tmp_path, text, message):
    path = tmp_path / "faces.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        build_index(path, tmp_path / "cache")


def test_a_csv_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "faces.csv"
    path.write_bytes(HEADER.encode() + b"img/a.jpg,male,1\nimg/\xe9.jpg,male,2\n")
    with pytest.raises(DataError, match=r"faces.csv, line 3: not UTF-8 text \(byte 0xe9\)"):
        build_index(path, tmp_path / "cache")


def test_identical_repeated_csv_rows_are_read_once_with_a_warning(sources, cache_dir, tmp_path):
    lines = sources.csv.read_text().splitlines()
    path = sources.csv.parent / "repeated.csv"
    path.write_text("\n".join([*lines, lines[1], lines[2]]) + "\n")
    with pytest.warns(AnnotationWarning, match=r"2 image\(s\) listed more than once"):
        index = build_index(path, cache_dir)
    assert len(index.images) == IMAGES
    warnings = index.report["annotation_warnings"]
    assert any(f"{lines[1].split(',')[0]} is listed 2 times" in w for w in warnings)
    assert f"lines 2, {len(lines) + 1}" in warnings[0]


def test_what_data_root_is_decides_the_source_or_one_error_names_all_three(
    sources, subset_root, tmp_path
):
    (tmp_path / "photos" / "people").mkdir(parents=True)
    with pytest.raises(
        DataError,
        match=r"No CelebA layout recognised in .*photos, nor class folders \(its subfolders: "
        r"people\)\. Expected a "
        r"CelebA copy .*, a folder with one subfolder per class \(female/ and male/: "
        r"data.class_names\), or a CSV file",
    ):
        build_index(tmp_path / "photos")
    listed = sources.csv.parent / "list.txt"
    listed.write_text(sources.csv.read_text())
    with pytest.raises(DataError, match=r"list.txt is a file, not a .csv file.*data.source=csv"):
        build_index(listed)
    assert len(build_index(listed, tmp_path / "cache", source="csv").images) == IMAGES
    (tmp_path / "photos" / "Female").mkdir()  # one class folder: an image folder, incomplete
    with pytest.raises(DataError, match=r"photos has no male/ folder: .*subfolders are: Female, "):
        build_index(tmp_path / "photos")
    with pytest.raises(DataError, match=r"Unknown data.source 'folder'; choose one of auto"):
        build_index(sources.folder, source="folder")


def test_class_names_choose_the_folders_and_the_labels(sources, cache_dir, tmp_path):
    root = tmp_path / "faces"
    shutil.copytree(sources.folder, root, copy_function=os.link)
    (root / "female").rename(root / "woman")
    (root / "male").rename(root / "Man")
    module = _module(root, cache_dir, class_names=["woman", "man"])
    assert module.summary()["images_usable"] == IMAGES
    assert module.index.images["male"].sum() == sum(sources.male.values())
    with pytest.raises(DataError, match=r"subfolders: Man, woman\)\. Expected .*female/ and male/"):
        build_index(root, cache_dir)


# ----------------------------------------------------------------------------- config
def _compose(*overrides: str, name: str = "config"):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.source=folder", r"data.source=folder is not allowed: expected one of auto, celeba"),
        ("data.class_names=[female]", r"data.class_names=\['female'\] is not allowed"),
        ("data.class_names=[Male,male]", r"differ whatever their case"),
        ("data.csv_columns.label=null", r"data.csv_columns=.* path and label"),
        ("+data.csv_columns.race=race", r"data.csv_columns=.*is not allowed"),
    ],
)
def test_bad_source_settings_are_refused_before_a_run(override, message):
    for name, schema in (("config", TrainSchema), ("eval", EvalSchema)):
        extra = ["ckpt_path=x.ckpt"] if name == "eval" else []
        with pytest.raises(ConfigError, match=message):
            validate(_compose(override, *extra, name=name), schema)


# ----------------------------------------------------------------------------- entry points
def _cli(*arguments: str) -> subprocess.CompletedProcess:
    return forked_python.run(
        [sys.executable, "-m", "celeba_gender.data", *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_the_data_report_on_each_source(sources, cache_dir):
    folder = _cli(str(sources.folder), "--cache-dir", str(cache_dir))
    assert folder.returncode == 0, folder.stderr
    assert f"(layout: image_folder)\nimages:   {IMAGES} listed, {IMAGES} present" in folder.stdout
    assert "identity_disjoint: false\n" in folder.stdout
    assert f"{IMAGES // 2} of {IMAGES} images have no identity" in folder.stdout
    table = _cli(str(sources.csv), "--cache-dir", str(cache_dir))
    assert table.returncode == 0, table.stderr
    assert "(layout: csv)" in table.stdout and "identity_disjoint: true\n" in table.stdout
    renamed = _cli(str(sources.csv), "--cache-dir", str(cache_dir), "--csv-columns", "label=age")
    assert renamed.returncode == 2 and "Traceback" not in renamed.stderr
    assert "column 'age': '20' is not a label" in renamed.stderr


def _predictions(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "test_predictions.csv")


@pytest.mark.parametrize(("train_on", "test_on"), [("folder", "csv"), ("csv", "folder")])
def test_train_on_one_source_and_evaluate_on_the_other(
    sources, run_env, tmp_path, train_on, test_on
):
    roots = {"folder": sources.folder, "csv": sources.csv}
    run = tmp_path / "run"
    trained = run_script(
        "train.py",
        "experiment=smoke",
        f"data.root={roots[train_on]}",
        f"hydra.run.dir={run}",
        env=run_env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["data_root"] == str(roots[train_on])
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["layout"] == ("image_folder" if train_on == "folder" else "csv")
    assert summary["identity_disjoint"] is (train_on == "csv")
    listed = set(build_index(roots[train_on], run_env["CELEBA_GENDER_CACHE"]).images["file_name"])
    assert set(_predictions(run)["file_name"]) <= listed

    out = tmp_path / "eval"
    evaluated = run_script(
        "eval.py",
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        f"data.root={roots[test_on]}",
        "data.split=all",
        f"hydra.run.dir={out}",
        env=run_env,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = _predictions(out)
    assert metrics["test_images"] == len(predictions) == IMAGES
    # Files named by their path in the source, with the source's labels.
    names = predictions["file_name"].map(lambda path: path.rsplit("/", 1)[-1])
    assert predictions["label"].tolist() == names.map(sources.male).tolist()
    if test_on == "csv":
        assert predictions["file_name"].str.startswith("img/").all()
    else:
        assert predictions["file_name"].str.match(r"(female|male)/").all()
    accuracy = ((predictions["p_male"] > 0.5) == (predictions["label"] == 1)).mean()
    assert metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)


# ----------------------------------------------------------------------------- review fixes
def test_a_split_not_by_identity_does_not_claim_to_keep_identities_apart(
    sources, cache_dir, tmp_path
):
    lines = sources.csv.read_text().splitlines()
    # Every other row without identity: seed_protocol draws images, known persons or not.
    rows = [
        lines[0],
        *(row if n % 2 else row[: row.rfind(",") + 1] for n, row in enumerate(lines[1:])),
    ]
    path = sources.csv.parent / "half_known.csv"
    path.write_text("\n".join(rows) + "\n")
    module = _module(path, cache_dir, split="seed_protocol", seed_protocol_train_per_class=20)
    summary = module.summary()
    assert summary["identity_disjoint"] is False
    note = summary["identity_note"]
    assert note.startswith(
        f"{IMAGES // 2} of {IMAGES} images have no identity, and split=seed_protocol does not "
        "keep persons apart (only split=identity does"
    )
    assert "keeps known identities apart" not in note
    # split=identity on the same file still says what it does.
    identity = _module(path, cache_dir).summary()["identity_note"]
    assert "the split keeps known identities apart" in identity


def test_class_names_that_make_male_label_0_are_refused(sources, cache_dir):
    # Swapped, the models' P(label 1) would be written as p_male and compared with CelebA's Male.
    for names in (["male", "female"], ["Male", "woman"], ["man", "Female"]):
        with pytest.raises(DataError, match=r"label 1 is male .*name the female class first"):
            build_index(sources.folder, cache_dir, class_names=names)
    with pytest.raises(ConfigError, match=r"data.class_names=\['male', 'female'\] is not allowed"):
        validate(_compose("data.class_names=[male,female]"), TrainSchema)
    # Names are read as CSV cells are, stripped: ' Female' and 'MALE ' still label the rows.
    index = build_index(sources.csv, cache_dir, class_names=[" female", "male "])
    assert index.images["male"].sum() == sum(sources.male.values())


def test_the_analysis_of_a_run_on_a_csv_says_what_is_true(sources, run_env, tmp_path):
    # The CSV's own column names: the analysis must read them from the run's config.
    table = pd.read_csv(sources.csv, dtype=str)
    renamed = sources.csv.parent / "renamed.csv"
    table.rename(columns={"path": "file", "label": "gender", "identity": "person"}).to_csv(
        renamed, index=False
    )
    sweep = tmp_path / "sweep"
    trained = run_script(
        "train.py",
        "experiment=smoke",
        f"data.root={renamed}",
        "data.csv_columns={path: file, label: gender, identity: person}",
        f"hydra.run.dir={sweep / '0_csv'}",
        env=run_env,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    analysis = forked_python.run(
        [sys.executable, "-m", "celeba_gender.analysis", str(sweep), "--no-notebook"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **run_env},
    )
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    report = (sweep / "report" / "report.md").read_text()
    assert "does not exist or is not a folder" not in report
    assert (
        f"0_csv: no fairness slices ({renamed} is a CSV source (data.source=csv): it has labels "
        "but no CelebA attributes to slice by" in report
    )
    # Every test image's person is in the CSV: the bootstrap resamples persons.
    runs = pd.read_csv(sweep / "report" / "runs.csv")
    assert runs["resampled"].tolist() == ["identities"]
    # The worst-images grid finds the images beside the CSV.
    assert "no worst-images grid" not in report
    assert (sweep / "report" / "figures" / "worst_images.png").is_file()


def test_a_run_from_before_the_added_settings_resumes_at_their_defaults(run_env, tmp_path):
    """Every key of ADDED_SETTINGS (the data sources, the recipe options of issue 15) removed
    from a saved run's config, as a run made before them saved it: it resumes."""
    run = (
        "experiment=smoke",
        "trainer.max_epochs=1",
        "callbacks.model_checkpoint.save_last=true",
        "callbacks.model_checkpoint.save_weights_only=false",
        "checkpoint_every_n_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    # Killed at step 2 of the epoch's 2: step 1's checkpoint (written as step 2 starts) holds.
    killed = run_script("train.py", *run, "fault.kill_at_step=2", env=run_env)
    assert killed.returncode != 0 and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    for saved in (tmp_path / "run" / ".hydra").glob("*config.yaml"):  # as such a run saved it
        config = OmegaConf.load(saved)
        # Deeper keys first: module.label_smoothing refers to the top-level one.
        for dotted in sorted(ADDED_SETTINGS, key=lambda k: -k.count(".")):
            *parents, key = dotted.split(".")
            (OmegaConf.select(config, ".".join(parents)) if parents else config).pop(key)
        OmegaConf.save(config, saved)
    changed = run_script("train.py", *run, "resume=true", "data.source=celeba", env=run_env)
    assert changed.returncode == 2 and "data.source: 'auto' -> 'celeba'" in changed.stderr
    smoothed = run_script("train.py", *run, "resume=true", "label_smoothing=0.1", env=run_env)
    assert smoothed.returncode == 2 and "label_smoothing: 0.0 -> 0.1" in smoothed.stderr
    resumed = run_script("train.py", *run, "resume=true", env=run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "ok"
