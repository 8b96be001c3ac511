"""Hostile image folders and permissions: filesystem oddities never end a scan with a traceback,
and every file the data layer writes gets the user's normal umask, also under threads."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import forked_python
import pytest
from conftest import (
    REPO,
    _subset_names,
    _write_official_annotations,
    can_drop_read_override,
    run_script,
    without_read_override,
)

from celeba_gender.data import DataError, build_index
from celeba_gender.data.__main__ import main as data_main
from celeba_gender.data.datamodule import CelebADataModule
from celeba_gender.data.scan import check_image, scan_image_folder


def small_copy(subset_root: Path, root: Path, count: int = 12) -> list[str]:
    """An official-layout copy of ``count`` subset images (annotations cut down to them)."""
    names = _subset_names(subset_root, count)
    image_dir = root / "img_align_celeba"
    image_dir.mkdir(parents=True)
    for name in names:
        shutil.copy(subset_root / "img_align_celeba" / name, image_dir / name)
    _write_official_annotations(subset_root, root, names, root / "Anno", root / "Eval")
    return names


def plant_oddities(image_dir: Path, good: str) -> dict[str, str]:
    """Entries with image names that are not readable image files -> the reason expected."""
    (image_dir / "loop.jpg").symlink_to("loop.jpg")
    (image_dir / "dangling.jpg").symlink_to("nowhere.jpg")
    (image_dir / "folder.jpg").mkdir()
    os.mkfifo(image_dir / "fifo.jpg")
    (image_dir / "link_to_folder.jpg").symlink_to("folder.jpg")
    (image_dir / "link.jpg").symlink_to(good)  # a working link is its target (a duplicate)
    return {
        "loop.jpg": "symlink loop",
        "dangling.jpg": "dangling symlink",
        "folder.jpg": "not a regular file (a folder)",
        "fifo.jpg": "not a regular file (a FIFO)",
        "link_to_folder.jpg": "not a regular file (a folder)",
    }


def test_filesystem_oddities_are_rows_with_a_problem(subset_root, tmp_path):
    root = tmp_path / "celeba"
    names = small_copy(subset_root, root)
    image_dir = root / "img_align_celeba"
    expected = plant_oddities(image_dir, names[0])

    scan, facts = scan_image_folder(image_dir, tmp_path / "cache")
    rows = scan.set_index("file")
    for name, reason in expected.items():
        assert reason in rows.loc[name, "problem"], (name, rows.loc[name, "problem"])
    assert rows.loc["link.jpg", "problem"] == ""
    assert facts["not_regular_files"] == len(expected)
    # A second scan reuses the regular files and lists the oddities again (never cached).
    again, facts = scan_image_folder(image_dir, tmp_path / "cache")
    assert facts["checked"] == 0 and again.equals(scan)

    index = build_index(root, tmp_path / "cache")
    assert set(index.report["unreadable"]) == set(expected)
    assert index.report["duplicates"] == {"link.jpg": f"copy of {names[0]} (same bytes)"}
    assert sorted(index.images["file"]) == names
    # The cached loader's decode and the data report run on the same folder without a crash.
    module = CelebADataModule(
        root, split="all", loader="cached", cache_dir=tmp_path / "cache", num_workers=0
    )
    module.prepare_data()
    module.setup()
    assert len(module.datasets["test"]) == len(names)
    result = forked_python.run(
        [sys.executable, "-m", "celeba_gender.data", str(root), "--split", "all"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "CELEBA_GENDER_CACHE": str(tmp_path / "cache")},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "symlink loop" in result.stdout and "a FIFO" in result.stdout


def test_a_file_gone_or_replaced_after_listing_is_a_problem_not_a_crash(subset_root, tmp_path):
    source = next((subset_root / "img_align_celeba").iterdir())
    vanished = tmp_path / "vanished.jpg"
    row = check_image(vanished)  # listed, then deleted before its check
    assert "no such file" in row["problem"] and row["size"] == -1
    replaced = tmp_path / "replaced.jpg"
    os.mkfifo(replaced)  # a FIFO is not opened for reading: no hang
    assert "a FIFO" in check_image(replaced)["problem"]
    (tmp_path / "dir.jpg").mkdir()
    assert "a folder" in check_image(tmp_path / "dir.jpg")["problem"]
    shutil.copy(source, tmp_path / "good.jpg")
    assert check_image(tmp_path / "good.jpg")["problem"] == ""


def _held_to_permissions(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """``args`` run as root without its right to read any file: held to the permission bits,
    as an unprivileged user is (the checkout and its venv stay readable to it, where a fresh
    clone in a 0700 temporary folder would not be to another user)."""
    environment = {
        **os.environ,
        "HOME": str(home),
        "CELEBA_GENDER_CACHE": str(home / "cache"),
    }
    return forked_python.run(
        args,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=300,
        preexec_fn=without_read_override,
    )


@pytest.fixture
def shared_tmp():
    """A world-readable temporary folder (pytest's own are root-only, 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="celeba-hostile-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(can_drop_read_override() is not None, reason=str(can_drop_read_override()))
def test_unreadable_files_and_folders_for_an_unprivileged_user(subset_root, shared_tmp):
    root = shared_tmp / "celeba"
    names = small_copy(subset_root, root)
    home = shared_tmp / "home"
    (home / "cache").mkdir(parents=True)
    for folder in (home, home / "cache"):
        folder.chmod(0o777)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    secret = root / "img_align_celeba" / names[1]
    secret.chmod(0o000)

    command = [sys.executable, "-m", "celeba_gender.data", str(root), "--split", "all", "--json"]
    result = _held_to_permissions(command, home)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert "permission denied" in summary["unreadable"][names[1]]
    assert summary["images_usable"] == len(names) - 1

    # Made readable again (chmod keeps size and mtime): the scan cache must not hold the
    # refusal, which said nothing about the file's content.
    secret.chmod(0o644)
    result = _held_to_permissions(command, home)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert names[1] not in summary["unreadable"]
    assert summary["images_usable"] == len(names)

    # A folder this user may not list: a data error saying so, not a traceback.
    (root / "img_align_celeba").chmod(0o311)
    result = _held_to_permissions(command, home)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert "Cannot list the image folder" in result.stderr
    assert "permission denied" in result.stderr


UMASK_SCRIPT = textwrap.dedent(
    """
    import os, stat, sys, threading
    from pathlib import Path

    os.umask(int(sys.argv[1], 8))
    root, out = Path(sys.argv[2]), Path(sys.argv[3])
    # Reading the umask by setting it (0, then back) opens the race below: no call at all.
    real_umask, umask_calls = os.umask, []
    os.umask = lambda mask: umask_calls.append(mask) or real_umask(mask)
    from celeba_gender.data.cache import atomic_write
    from celeba_gender.data.datamodule import CelebADataModule

    module = CelebADataModule(root, split="all", loader="cached", cache_dir=out / "cache",
                              summary_path=out / "run" / "data_summary.json", num_workers=0)
    module.prepare_data()
    module.setup()

    # The race: while atomic writes run, another thread creates files. A umask read by
    # setting it to 0 and back lets some of those be created world-writable.
    sys.setswitchinterval(1e-6)
    stop = threading.Event()
    expected = 0o666 & ~int(sys.argv[1], 8)
    wrong = []

    def create():
        # Files another part of the program creates meanwhile (one name, deleted at once).
        path = out / "other-thread-file"
        while not stop.is_set():
            descriptor = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666)
            mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
            os.close(descriptor)
            os.unlink(path)
            if mode != expected:
                wrong.append(oct(mode))

    thread = threading.Thread(target=create)
    thread.start()
    for number in range(500):
        atomic_write(out / "atomic" / f"result-{number % 20}.json", b"{}")
    stop.set()
    thread.join()
    print("other thread's files with a wrong mode:", len(wrong), wrong[:3], file=sys.stderr)
    if wrong:
        sys.exit(3)
    if umask_calls:
        print("os.umask called with", umask_calls, file=sys.stderr)
        sys.exit(4)
    for path in sorted(out.rglob("*")):
        print(oct(stat.S_IMODE(path.stat().st_mode)), path.is_dir(), path.relative_to(out))
    """
)


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [("022", 0o644, 0o755), ("027", 0o640, 0o750)]
)
def test_results_and_caches_get_the_users_umask(subset_root, tmp_path, umask, file_mode, dir_mode):
    root = tmp_path / "celeba"
    small_copy(subset_root, root, count=8)
    out = tmp_path / "out"
    out.mkdir()
    result = forked_python.run(
        [sys.executable, "-c", UMASK_SCRIPT, umask, str(root), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modes = {}
    for line in result.stdout.splitlines():
        mode, is_dir, name = line.split(" ", 2)
        modes[name] = (int(mode, 8), is_dir == "True")
    kinds = {
        "scan cache": [n for n in modes if n.endswith(".csv")],
        "image cache": [n for n in modes if n.endswith(".u8")],
        "image cache facts": [n for n in modes if n.startswith("cache/") and n.endswith(".json")],
        "lock": [n for n in modes if n.endswith(".lock")],
        "data report": ["run/data_summary.json"],
        "atomic writes": [n for n in modes if n.startswith("atomic/result")],
    }
    for kind, names in kinds.items():
        assert names, kind
        for name in names:
            assert modes[name][0] == file_mode, (kind, name, oct(modes[name][0]))
    wrong = {n: oct(m) for n, (m, d) in modes.items() if m != (dir_mode if d else file_mode)}
    assert not wrong, wrong
    assert not any(n.startswith(("atomic/.", "cache/.")) for n in modes)  # no temporary left
    assert stat.S_IMODE(out.stat().st_mode) & 0o002 == 0


def test_train_py_runs_on_a_folder_with_oddities(sample_root, run_env, tmp_path):
    root = tmp_path / "celeba"
    shutil.copytree(sample_root, root)
    image_dir = root / "img_align_celeba"
    expected = plant_oddities(image_dir, sorted(p.name for p in image_dir.iterdir())[0])
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "experiment=smoke",
        f"hydra.run.dir={run}",
        env={**run_env, "CELEBA_ROOT": str(root)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((run / "data_summary.json").read_text())
    for name, reason in expected.items():
        assert reason in summary["unreadable"][name], name


@pytest.mark.parametrize("loader", ["cached", "per_sample"])
def test_a_file_broken_after_the_scan_is_a_data_error(subset_root, tmp_path, loader):
    """The scan said usable; the file changed before its decode: a DataError naming it (and
    no half-built image cache), not a decoder traceback."""
    root = tmp_path / "celeba"
    names = small_copy(subset_root, root, count=10)
    module = CelebADataModule(
        root, split="all", loader=loader, cache_dir=tmp_path / "cache", num_workers=0
    )
    if loader == "per_sample":
        module.prepare_data()
    else:
        # The scan ran before without filling the image cache (a data report, a per_sample
        # run): the cache's build decodes the files anew.
        module.index = build_index(root, tmp_path / "cache")
    victim = root / "img_align_celeba" / names[3]
    victim.write_bytes(victim.read_bytes()[:500])
    if loader == "cached":
        with pytest.raises(DataError, match="changed since the data scan") as caught:
            module.prepare_data()
        assert not list((tmp_path / "cache").rglob("*.partial"))
    else:
        module.setup()
        dataset = module.datasets["test"]
        row = [Path(p).name for p in dataset.paths].index(names[3])
        with pytest.raises(DataError, match="changed since the data scan") as caught:
            dataset[row]
    assert names[3] in str(caught.value) and "truncated" in str(caught.value).lower()


def test_file_names_that_are_not_utf8_or_hold_a_newline(subset_root, tmp_path, capsys):
    root = tmp_path / "celeba"
    names = small_copy(subset_root, root, count=6)
    image_dir = root / "img_align_celeba"
    source = (image_dir / names[0]).read_bytes()
    Path(os.fsdecode(os.fsencode(image_dir) + b"/\xff\xfe.jpg")).write_bytes(source)  # Latin-1
    (image_dir / "new\nline.jpg").write_bytes(source[:300])
    first = build_index(root, tmp_path / "cache").report
    second = build_index(root, tmp_path / "cache").report
    assert second["scan"]["checked"] == 0  # the scan cache holds those names too
    assert first["duplicates"] == second["duplicates"]
    assert os.fsdecode(b"\xff\xfe.jpg") in second["duplicates"]
    assert "new\nline.jpg" in second["unreadable"]
    code = data_main([str(root), "--split", "all", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    assert "\\udcff\\udcfe.jpg" in capsys.readouterr().out


def test_a_huge_file_under_an_image_name_is_a_row_not_a_crash(subset_root, tmp_path):
    # A stray multi-gigabyte file (a video, a disk image) named like a photo: the scan must not
    # read it whole into memory. Sparse, so it costs no disk; the address-space limit turns
    # reading it whole into a MemoryError instead of an out-of-memory kill.
    folder = tmp_path / "img"
    folder.mkdir()
    shutil.copy(next((subset_root / "img_align_celeba").glob("*.jpg")), folder / "000001.jpg")
    with open(folder / "000002.jpg", "wb") as handle:
        handle.truncate(6 << 30)
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from celeba_gender.data.scan import scan_image_folder
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        rows, _ = scan_image_folder(Path({str(folder)!r}), Path({str(tmp_path / "cache")!r}))
        print(dict(zip(rows["file"], rows["problem"])))
        """
    )
    result = forked_python.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    problems = eval(result.stdout)  # noqa: S307 - our own dict's repr
    assert problems["000001.jpg"] == ""
    assert problems["000002.jpg"].startswith("too large")


def test_a_dataset_folder_whose_path_is_not_utf8(subset_root, tmp_path, capsys):
    # "café" saved by a Latin-1 system: the path holds the byte 0xe9, not UTF-8.
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    names = small_copy(subset_root, root, count=4)
    index = build_index(root, tmp_path / "cache")
    assert sorted(index.images["file"]) == sorted(names)
    assert build_index(root, tmp_path / "cache").report["scan"]["checked"] == 0
    code = data_main([str(root), "--split", "all", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    assert "caf\\udce9" in capsys.readouterr().out


def test_the_umask_fallback_without_proc_is_thread_safe(monkeypatch):
    # Without /proc (macOS, some containers) the umask is read by setting and restoring it;
    # threads doing so at once must not leave it at the fallback's 077. A thread switch right
    # after each os.umask call (the sleep) makes the worst interleaving likely.
    from celeba_gender.data import cache

    real_umask = os.umask

    def umask_then_switch(mask: int) -> int:
        old = real_umask(mask)
        time.sleep(0.0005)
        return old

    monkeypatch.setattr(cache, "_PROC_STATUS", "/nonexistent/proc/self/status")
    previous = real_umask(0o022)
    monkeypatch.setattr(os, "umask", umask_then_switch)
    try:
        assert cache.current_umask() == 0o022
        threads = [
            threading.Thread(target=lambda: [cache.current_umask() for _ in range(50)])
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        left = real_umask(previous)
    assert left == 0o022, oct(left)
