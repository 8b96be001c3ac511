"""Shared fixtures: the real CelebA subset, and small copies of it with realistic defects.

The subset lives beside the project in ../shared (or $CELEBA_SUBSET). A fresh clone does not
have it: tests that need it skip there, and fail under CI (CI=true), where it must be present.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import forked_python
import pandas as pd
import pytest
from child_setup import as_at_a_terminal, can_drop_read_override, without_read_override  # noqa: F401
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "celeba_gender" / "assets" / "celeba_sample"  # committed: present everywhere
SUBSET = Path(os.environ.get("CELEBA_SUBSET", REPO.parent / "shared" / "data" / "celeba-subset"))


def pytest_configure(config: pytest.Config) -> None:
    """The configs' resolvers registered; under xdist, each worker's torch (and every process
    it starts: the env is inherited) gets its share of the cores: two workers with two threads
    each, plus their subprocesses, would fight over two cores."""
    # Tests compose conf/ in this process, as a command does once it has started.
    from celeba_gender.config import register_resolvers

    register_resolvers()
    _parse_each_yaml_text_once()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, share)


def _parse_each_yaml_text_once() -> None:
    """OmegaConf.load, in the test process, parses each YAML text once: the tests compose conf/
    about a thousand times (the schema test alone 330), and parsing is a sixth of a compose.
    Each call still gets a config of its own, built as OmegaConf builds it from the parse; the
    commands the tests start load as they always do."""
    import copy
    import io

    from omegaconf import OmegaConf

    load, parsed = OmegaConf.load, {}

    def load_once(file_):
        if isinstance(file_, (str, Path)):
            text = Path(file_).read_text(encoding="utf-8")
        elif getattr(file_, "read", None):
            text = file_.read()
        else:
            return load(file_)  # its own error
        if not isinstance(text, str):
            return load(io.BytesIO(text))
        if text not in parsed:
            parsed[text] = OmegaConf.to_container(load(io.StringIO(text)))
        return OmegaConf.create(copy.deepcopy(parsed[text]))

    OmegaConf.load = staticmethod(load_once)


# The files that take longest (a full run's --durations, 2 cores), started first: `make test`
# hands whole files to its workers in collection order (--dist loadfile --no-loadscope-reorder),
# so the short files fill in at the end instead of one long file running alone. Only the
# order depends on this list; a stale entry costs minutes, not correctness.
LONGEST_FIRST = (
    "test_analysis.py",
    "test_config_schema.py",
    "test_resume.py",
    "test_benchmarks.py",
    "test_smoke_grid_vgg.py",
    "test_install.py",
    "test_training.py",
    "test_explain.py",
    "test_smoke_grid_resnet.py",
    "test_interrupt.py",
    "test_sweeps.py",
    "test_loggers.py",
    "test_demo.py",
    "test_data_module.py",
)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the imports and the collection made (torch, Lightning, Hydra, the test modules:
    alive all session) set aside from the garbage collector, as a command does when it starts
    (startup.start_command): each full pass walked them all, in every in-process test."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture
def ctrl_c_reaches_this_process():
    """Ctrl-C (SIGINT) delivered as at a terminal: a background or nohup shell starts pytest
    with SIGINT ignored, and a command leaves a signal ignored on purpose ignored."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _unavailable(reason: str) -> None:
    """Skip a test whose tool or data is missing here; under CI, where it must be, fail."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}; under CI it must be present")
    pytest.skip(reason)


def _require_subset() -> Path:
    if (SUBSET / "img_align_celeba").is_dir():
        return SUBSET
    _unavailable(f"the CelebA subset is not at {SUBSET} (set CELEBA_SUBSET to its folder)")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium for the browser tests (`make setup` installs it as root), or $CHROMIUM."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not found:
        _unavailable("no chromium on PATH (`apt-get install chromium`, or `make setup` as root)")
    return found


def run_script(script: str, *overrides: str, env: dict | None = None, timeout: int = 600):
    """Run a script of the repo (train.py, eval.py, ...) as a user would, from the repo root;
    without CELEBA_ROOT unless ``env`` sets it, so the embedded sample is the data."""
    environment = {**os.environ, **(env or {})}
    if "CELEBA_ROOT" not in (env or {}):
        environment.pop("CELEBA_ROOT", None)  # the default: the embedded sample
    return forked_python.run(
        [sys.executable, str(REPO / script), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=REPO,
    )


@contextlib.contextmanager
def umask_calls() -> Iterator[list[int]]:
    """Every ``os.umask(mask)`` made meanwhile, by any thread of this process: the umask can only
    be read that way by setting it, and a file another thread creates before it is set back
    gets the wrong permissions (world-writable after ``os.umask(0)``)."""
    real = os.umask
    calls: list[int] = []

    def recording(mask: int) -> int:
        calls.append(mask)
        return real(mask)

    os.umask = recording
    try:
        yield calls
    finally:
        os.umask = real


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``folder``: equal stamps before and
    after a command mean it wrote nothing there."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# Files at least this big (checkpoints, image caches) are deleted when the session ends: pytest
# keeps the temporary folders of the last three sessions, and they must not fill a disk.
BIG_FILE_BYTES = 5 * 2**20


def delete_big_files(folder: Path) -> None:
    """Delete the files of at least BIG_FILE_BYTES under ``folder`` (a fixture's, at its end)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size >= BIG_FILE_BYTES:
            path.unlink()


@pytest.fixture(scope="session", autouse=True)
def delete_big_files_at_the_end(tmp_path_factory):
    yield
    delete_big_files(tmp_path_factory.getbasetemp())


@pytest.fixture(autouse=True)
def delete_big_files_after_each_test(request):
    """A test's own temporary folder loses its checkpoints and caches when the test ends, so
    the session's folders stay small while it runs (shared fixtures keep theirs)."""
    # Asked for now, so that it is torn down after this fixture.
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        delete_big_files(folder)


def write_sparse(path: Path, data: bytes, block: int = 2**16) -> None:
    """Write ``data`` leaving its all-zero blocks as holes: the file reads the same and takes
    only its non-zero blocks on disk."""
    with open(path, "wb") as file:
        for offset in range(0, len(data), block):
            chunk = data[offset : offset + block]
            if chunk.count(0) == len(chunk):
                file.seek(len(chunk), 1)
            else:
                file.write(chunk)
        file.truncate(len(data))


@pytest.fixture(scope="session")
def run_env(cache_dir, tmp_path_factory) -> dict:
    """Caches in the session's temporary folder; no pretrained weights unless a test adds them."""
    return {
        "CELEBA_GENDER_CACHE": str(cache_dir),
        "TORCH_HOME": str(tmp_path_factory.mktemp("torch")),
    }


@pytest.fixture(scope="session")
def smoke_run(run_env, tmp_path_factory) -> Path:
    """The README's main command at smoke size, on the embedded sample (no CELEBA_ROOT)."""
    folder = tmp_path_factory.mktemp("smoke") / "run"
    result = run_script("train.py", "experiment=smoke", f"hydra.run.dir={folder}", env=run_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def subset_root() -> Path:
    return _require_subset()


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache folder for the session, so the subset's files are checked and decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def subset_attributes(subset_root) -> pd.DataFrame:
    from celeba_gender.data.annotations import read_attributes

    return read_attributes(subset_root / "Anno" / "list_attr_celeba.txt")[0]


@dataclass
class Copy:
    """A small CelebA copy built in a temporary folder, with what was planted in it."""

    root: Path
    image_dir: Path
    good: list[str]  # files expected usable, by annotation name
    planted: dict[str, str]  # file -> what is wrong with it (or special about it)
    missing: list[str]  # annotated names with no file


def _subset_names(subset_root: Path, count: int) -> list[str]:
    names = sorted(
        p.name for p in (subset_root / "img_align_celeba").iterdir() if "(" not in p.name
    )
    return names[:count]


def _write_official_annotations(
    subset_root: Path, root: Path, names: list[str], anno: Path, evaluation: Path
) -> None:
    """Cut the real annotation files down to ``names`` (keeping the official format)."""
    anno.mkdir(parents=True, exist_ok=True)
    evaluation.mkdir(parents=True, exist_ok=True)
    lines = (subset_root / "Anno" / "list_attr_celeba.txt").read_text().splitlines()
    wanted = set(names)
    rows = [line for line in lines[2:] if line.split()[0] in wanted]
    (anno / "list_attr_celeba.txt").write_text("\n".join([str(len(rows)), lines[1], *rows]) + "\n")
    for source, target in (
        (subset_root / "Anno" / "identity_CelebA.txt", anno / "identity_CelebA.txt"),
        (subset_root / "Eval" / "list_eval_partition.txt", evaluation / "list_eval_partition.txt"),
    ):
        kept = [line for line in source.read_text().splitlines() if line.split()[0] in wanted]
        target.write_text("\n".join(kept) + "\n")


@pytest.fixture
def defective_copy(subset_root, tmp_path) -> Copy:
    """Official layout, 40 good images plus every defect users' copies have."""
    names = _subset_names(subset_root, 52)
    good, spare = names[:40], names[40:]
    root = tmp_path / "celeba"
    image_dir = root / "img_align_celeba"
    image_dir.mkdir(parents=True)
    source = subset_root / "img_align_celeba"
    for name in good:
        shutil.copy(source / name, image_dir / name)
    planted = {}
    # Duplicates: a "(1)" copy beside its original, and the same bytes under another name.
    shutil.copy(source / good[0], image_dir / good[0].replace(".jpg", "(1).jpg"))
    planted[good[0].replace(".jpg", "(1).jpg")] = "duplicate by name"
    shutil.copy(source / good[1], image_dir / spare[0])
    planted[spare[0]] = "duplicate by content"
    # Broken files, each under an annotated name.
    data = (source / spare[1]).read_bytes()
    (image_dir / spare[1]).write_bytes(data[: len(data) // 2])
    planted[spare[1]] = "truncated"
    (image_dir / spare[2]).write_bytes(b"")
    planted[spare[2]] = "zero-byte"
    (image_dir / spare[3]).write_text("this is not an image\n")
    planted[spare[3]] = "not an image"
    # Unusual but readable: PNG content named .jpg, grayscale, CMYK, RGBA.
    with Image.open(source / spare[4]) as image:
        image.save(image_dir / spare[4], format="PNG")
        image.convert("L").save(image_dir / spare[5], format="JPEG")
        image.convert("CMYK").save(image_dir / spare[6], format="JPEG")
        image.convert("RGBA").save(image_dir / spare[7].replace(".jpg", ".png"), format="PNG")
    planted[spare[4]] = "png named jpg"
    planted[spare[5]] = "grayscale"
    planted[spare[6]] = "cmyk"
    planted[spare[7].replace(".jpg", ".png")] = "rgba png, not annotated under that name"
    # Annotated but absent: spare[8:] have rows and no file, and spare[7] is there only as .png.
    missing = spare[7:8] + spare[8:]
    _write_official_annotations(subset_root, root, names, root / "Anno", root / "Eval")
    return Copy(
        root=root,
        image_dir=image_dir,
        good=[*good, spare[4], spare[5], spare[6]],
        planted=planted,
        missing=missing,
    )


@pytest.fixture
def study_copy(subset_root, subset_attributes, tmp_path) -> Copy:
    """The reference study's subset layout, with a CRLF attribute file and no count line."""
    names = _subset_names(subset_root, 30)
    root = tmp_path / "study"
    image_dir = root / "Images"
    image_dir.mkdir(parents=True)
    for name in names:
        shutil.copy(subset_root / "img_align_celeba" / name, image_dir / name)
    shutil.copy(
        subset_root / "img_align_celeba" / names[3], image_dir / names[3].replace(".jpg", "(1).jpg")
    )
    attributes = subset_attributes.loc[names, ["Male", "Young", "Eyeglasses"]]
    table = attributes.reset_index()  # file_name column first, values already 0/1
    text = table.to_csv(sep=" ", index=False, lineterminator="\r\n")
    (root / "list_attribute_edit.txt").write_bytes(text.encode())
    identity = (subset_root / "Anno" / "identity_CelebA.txt").read_text().splitlines()
    wanted = set(names)
    (root / "class_identity.txt").write_text(
        "\n".join(line for line in identity if line.split()[0] in wanted) + "\n"
    )
    (root / "gender_classification.csv").write_text(
        "Male\n" + "\n".join(str(v) for v in attributes["Male"]) + "\n"
    )
    return Copy(root=root, image_dir=image_dir, good=names, planted={}, missing=[])
