"""Progress bars of the long steps other than training: drawn when stderr is a terminal (a
pseudo-terminal here), absent from pipes and under CI, and never in the CSV/JSON results."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import forked_python
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BAR = "%|"  # tqdm's bar: "Checking images: 100%|█████| 304/304 [00:01<00:00, 250img/s]"


def _run(args: list[str], env: dict, terminal: bool) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``python args`` from the repo root; with ``terminal``,
    stderr is a pseudo-terminal (what a user at a shell has), stdout a pipe."""
    environment = {**os.environ, **env}
    environment.pop("CELEBA_ROOT", None)
    if "CI" not in env:  # the suite may run under CI=true; these runs choose for themselves
        environment.pop("CI", None)
    command = [sys.executable, *args]
    if not terminal:
        done = forked_python.run(
            command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=600
        )
        return done.returncode, done.stdout, done.stderr
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes: a full terminal buffer would block the child
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process = forked_python.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=environment,
        cwd=REPO,
    )
    os.close(secondary)
    stdout, _ = process.communicate(timeout=600)
    reader.join(timeout=60)
    os.close(main)
    return process.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


def _no_bar(text: str) -> bool:
    return BAR not in text and "\r" not in text


def test_checking_a_copy_shows_progress_on_a_terminal_only(sample_root, tmp_path):
    """The one-off check of every file (a cache of its own per run, so each run checks)."""
    runs = {
        "terminal": ({}, True),
        "pipe": ({}, False),
        "terminal under CI": ({"CI": "true"}, True),
    }
    seen = {}
    for name, (env, terminal) in runs.items():
        env = {**env, "CELEBA_GENDER_CACHE": str(tmp_path / name.replace(" ", "_"))}
        code, stdout, stderr = _run(
            ["-m", "celeba_gender.data", str(sample_root), "--json"], env, terminal
        )
        assert code == 0, stderr[-3000:]
        assert json.loads(stdout)["images_usable"] > 300  # the JSON report, whole
        seen[name] = stderr
    assert "Checking images" in seen["terminal"] and BAR in seen["terminal"]
    assert "304/304" in seen["terminal"]  # every file of the sample, counted
    assert "Checking images" not in seen["pipe"] and _no_bar(seen["pipe"])
    assert "Checking images" not in seen["terminal under CI"]


def test_predict_and_export_show_progress_and_keep_it_out_of_their_files(
    smoke_run, run_env, sample_root, tmp_path
):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((sample_root / "img_align_celeba").glob("*.jpg"))[:12]:
        shutil.copy(path, photos / path.name)
    checkpoint = smoke_run / "checkpoints" / "best.ckpt"
    outputs = {}
    for terminal in (True, False):
        out = tmp_path / f"predicted_{terminal}"
        code, stdout, stderr = _run(
            [
                "predict.py",
                f"ckpt_path={checkpoint}",
                f"input={photos}",
                "detect=false",
                f"hydra.run.dir={out}",
            ],
            run_env,
            terminal,
        )
        assert code == 0, stderr[-3000:]
        outputs[terminal] = (out, stdout, stderr)
    out, stdout, terminal_text = outputs[True]
    assert "Photos" in terminal_text and "12/12" in terminal_text and BAR in terminal_text
    assert "Photos" not in outputs[False][2] and _no_bar(outputs[False][2])
    # The results are the same files with or without bars: rows only.
    assert (out / "predictions.csv").read_bytes() == (
        outputs[False][0] / "predictions.csv"
    ).read_bytes()
    assert len(pd.read_csv(out / "predictions.csv")) == 12
    assert len(json.loads((out / "predictions.json").read_text())) == 12
    assert _no_bar((out / "predictions.json").read_text()) and _no_bar(stdout)

    code, stdout, terminal_text = _run(
        ["-m", "celeba_gender.inference.export", str(checkpoint), str(tmp_path / "m.onnx")],
        run_env,
        terminal=True,
    )
    assert code == 0, terminal_text[-3000:]
    assert "Exporting m.onnx" in terminal_text and "3/3" in terminal_text
    assert "[torch.onnx]" not in terminal_text  # torch's own step lines: the bar replaces them
    assert stdout.splitlines()[0] == f"exported: {tmp_path / 'm.onnx'}" and _no_bar(stdout)


def test_analysis_shows_progress_and_keeps_it_out_of_its_tables(smoke_run, tmp_path):
    steps = ("Reading", "Bootstrap per run", "Figures")
    for terminal in (True, False):
        report = tmp_path / f"report_{terminal}"
        code, stdout, stderr = _run(
            ["-m", "celeba_gender.analysis", str(smoke_run), "--out", str(report), "--no-notebook"],
            {},
            terminal,
        )
        assert code == 0, stderr[-3000:]
        if terminal:
            assert all(step in stderr for step in steps) and BAR in stderr, stderr
        else:
            assert not any(step in stderr for step in steps) and _no_bar(stderr), stderr
        assert _no_bar(stdout) and stdout.startswith("report: ")
        for table in report.glob("*.csv"):
            assert _no_bar(table.read_text()), table.name
        assert _no_bar((report / "report.md").read_text())
