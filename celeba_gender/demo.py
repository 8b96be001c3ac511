"""``python -m celeba_gender.demo ckpt_path=PATH`` (or ``celeba-gender-demo``): a local web page
(Gradio) that labels the faces of an uploaded photo or a webcam snapshot.

The page shows the photo with each face boxed and labelled with P(male), a table of the faces
and their aligned crops. PATH is a checkpoint, an ONNX export, one run's folder or a sweep
folder: with several models a picker offers every job's ``checkpoints/best.ckpt``, and a second
picker shows another model's answer on the same photo beside the first.

Photos go through predict's own pipeline (``inference.run.predict_photos``: predict's decode,
MTCNN, alignment, the run's evaluation transform) with predict's settings (conf/demo.yaml takes
conf/predict.yaml's values). A photo that cannot be used (not an image, over ``max_pixels``,
no face) gets a message on the page and a row saying why, never a traceback.

The prediction is also the named API endpoint ``predict`` (photo in, and optionally the model's
name; annotated photo and table of faces out), for ``gradio_client``::

    Client("http://127.0.0.1:7860/").predict(handle_file("me.jpg"), api_name="/predict")

Local only: it listens on 127.0.0.1 (``host``), sends no analytics and loads nothing from the
internet (the page's fonts and scripts come with the gradio package).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Gradio reads this when it is imported: no usage statistics and no version check leave the
# machine (Blocks(analytics_enabled=False) below says it again for this page).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import hydra  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from PIL import Image  # noqa: E402

from celeba_gender.config import CONFIG_DIR  # noqa: E402  (registers the configs' resolvers)
from celeba_gender.data import DataError  # noqa: E402
from celeba_gender.inference.faces import DetectorUnavailable, FaceAligner  # noqa: E402
from celeba_gender.inference.predictor import GenderPredictor  # noqa: E402
from celeba_gender.inference.run import annotate, predict_photos  # noqa: E402

log = logging.getLogger(__name__)
CHECKPOINT = Path("checkpoints") / "best.ckpt"  # each training job's, in a run or sweep folder
# The table of faces, on the page and from the API: predict's row, less the photo's name.
TABLE_COLUMNS = ("face", "p_male", "label", "status", "x1", "y1", "x2", "y2", "note")
NO_MODEL = "(none)"
EMPTY_MESSAGE = "Upload a photo or take a webcam snapshot."


def find_models(path: str | Path) -> dict[str, Path]:
    """The models the page offers, by name: a model file as it is (its own checks say what is
    wrong with it when it is loaded), or every job of a run or sweep folder with a best.ckpt,
    named by its job folder."""
    from celeba_gender.analysis.collect import job_folders

    path = Path(path).expanduser()
    if not path.is_dir():
        return {path.name: path}
    jobs = job_folders(path)
    models = {job.name: job / CHECKPOINT for job in jobs if (job / CHECKPOINT).is_file()}
    if not models:
        raise DataError(
            f"ckpt_path={path}: no job of this folder has {CHECKPOINT} (pass a checkpoint, an "
            "ONNX export, a run folder or a sweep folder whose jobs finished)"
        )
    return models


@dataclass
class Answer:
    """One model's answer to one photo, as the page shows it."""

    annotated: Image.Image | None  # the photo with boxes and labels; None when unreadable
    table: pd.DataFrame  # TABLE_COLUMNS, one row per face (or one saying why there is none)
    crops: list[tuple[Image.Image, str]] = field(default_factory=list)  # (crop, caption)
    message: str = ""


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=list(TABLE_COLUMNS))


class Demo:
    """The page's work: a photo and a model's name in, an Answer out."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.models = find_models(cfg.ckpt_path)
        self._loaded: OrderedDict[str, GenderPredictor] = OrderedDict()
        self.aligner = FaceAligner.from_config(cfg.alignment, cfg.device) if cfg.detect else None
        self.predictor(self.default_model)  # a bad model file stops the command, not the page

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    def predictor(self, name: str) -> GenderPredictor:
        """The named model, loaded on first use; the ``models_in_memory`` most recent are kept."""
        if name not in self.models:
            raise DataError(f"model {name!r} is not one of {', '.join(self.models)}")
        if name not in self._loaded:
            self._loaded[name] = GenderPredictor.load(
                self.models[name], self.cfg.device, self.cfg.batch_size
            )
            while len(self._loaded) > max(1, self.cfg.models_in_memory):
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(name)
        return self._loaded[name]

    def answer(self, photo: str | None, model: str | None = None) -> Answer:
        """Label the faces of the photo file (an upload) with the named model (default: the
        first). Whatever goes wrong is the answer's message, never an exception."""
        if not photo:
            return Answer(None, empty_table(), message=EMPTY_MESSAGE)
        path = Path(photo)
        model = model or self.default_model
        try:
            predictor = self.predictor(model)
            result = next(
                predict_photos(
                    [path], predictor, self.aligner, self.cfg.threshold, self.cfg.max_pixels
                )
            )
        except Exception as error:  # noqa: BLE001 - a bad model of a sweep: its message
            log.exception("%s: %s", path, error)
            message = f"model {model}: {error}"
            return Answer(None, empty_table(), message=self._readable(message, path))
        rows = [
            {c: row.get(c) for c in TABLE_COLUMNS}
            | {"note": row.get("error") and self._readable(row["error"], path)}
            for row in result.rows
        ]
        table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
        faces = [row for row in result.rows if row["status"] == "ok"]
        # HEAT MAPS (issue 14, part 1): overlay each crop's class-activation map here, once
        # inference/explain.py exists (e.g. overlay(crop, class_activation_maps(...)[i])).
        crops = [
            (crop, f"face {row['face']}: {row['label']} {row['p_male']:.2f}")
            for crop, row in zip(result.crops, faces, strict=False)
        ]
        if faces:
            message = f"{model}: " + ", ".join(
                f"face {row['face']} {row['label']} (P(male) {row['p_male']:.2f})" for row in faces
            )
        else:
            message = self._readable(result.rows[0].get("error") or "no face found", path)
        annotated = annotate(result.photo, result.rows) if result.photo is not None else None
        return Answer(annotated, table, crops, message)

    @staticmethod
    def _readable(message: str, upload: Path) -> str:
        """The upload's own name, not the server's temporary path, in a message."""
        return message.replace(str(upload), upload.name)


def _photo_input() -> Any:
    """An image upload or webcam snapshot handed to the page's function as its file, undecoded:
    predict's own decode reads it, so a file that is not an image (or a decompression bomb)
    gets predict's message instead of Gradio's error. Set on the instance: a subclass of a
    Gradio component makes Gradio write a .pyi file beside this module."""
    import gradio as gr

    photo = gr.Image(label="Photo", sources=["upload", "webcam"], type="filepath", elem_id="photo")
    decode = photo.preprocess

    def undecoded(payload: Any) -> str | None:
        if payload is None or payload.path is None:  # a data: URL: Gradio decodes it
            return decode(payload)
        return str(payload.path)

    photo.preprocess = undecoded
    return photo


def build_app(demo: Demo) -> Any:
    """The page (a gradio.Blocks), not yet launched."""
    import gradio as gr

    several = len(demo.models) > 1
    names = list(demo.models)

    def predict(photo: str | None, model: str | None) -> tuple[Any, pd.DataFrame, Answer]:
        answer = demo.answer(photo, model)
        return answer.annotated, answer.table, answer

    def details(answer: Answer) -> tuple[str, list]:
        return answer.message, answer.crops

    def compare(photo: str | None, model: str | None) -> tuple[Any, pd.DataFrame, list, str]:
        if not photo or not model or model == NO_MODEL:
            return None, empty_table(), [], ""
        answer = demo.answer(photo, model)
        return answer.annotated, answer.table, answer.crops, answer.message

    with gr.Blocks(title="celeba-gender demo", analytics_enabled=False) as app:
        gr.Markdown(
            "# celeba-gender\nP(male) of each face in a photo, from "
            + (f"{len(names)} models of {demo.cfg.ckpt_path}" if several else names[0])
        )
        with gr.Row():
            photo = _photo_input()
            with gr.Column():
                model_a = gr.Dropdown(names, value=names[0], label="Model", visible=several)
                model_b = gr.Dropdown(
                    [NO_MODEL, *names],
                    value=names[1] if several else NO_MODEL,
                    label="Compare with",
                    visible=several,
                )
                run = gr.Button("Label faces", variant="primary")
        message = gr.Markdown(EMPTY_MESSAGE, elem_id="message")
        state = gr.State()
        with gr.Row():
            with gr.Column():
                annotated_a = gr.Image(label="Faces", type="pil", elem_id="annotated")
                table_a = gr.Dataframe(
                    headers=list(TABLE_COLUMNS), label="Faces", interactive=False, elem_id="table"
                )
                # The aligned crops the model sees (heat maps go on them: see Demo.answer).
                crops_a = gr.Gallery(
                    label="Aligned crops",
                    columns=4,
                    height=300,
                    object_fit="contain",
                    elem_id="crops",
                )
            with gr.Column(visible=several):
                annotated_b = gr.Image(label="Compared model", type="pil", elem_id="annotated_b")
                table_b = gr.Dataframe(
                    headers=list(TABLE_COLUMNS), interactive=False, elem_id="table_b"
                )
                crops_b = gr.Gallery(
                    label="Aligned crops",
                    columns=4,
                    height=300,
                    object_fit="contain",
                    elem_id="crops_b",
                )
                message_b = gr.Markdown(elem_id="message_b")
        gr.on(
            triggers=[photo.change, run.click, model_a.change],
            fn=predict,
            inputs=[photo, model_a],
            outputs=[annotated_a, table_a, state],
            api_name="predict",
        ).then(details, [state], [message, crops_a], api_visibility="private")
        if several:
            gr.on(
                triggers=[photo.change, run.click, model_b.change],
                fn=compare,
                inputs=[photo, model_b],
                outputs=[annotated_b, table_b, crops_b, message_b],
                api_visibility="private",
            )
    return app


def run_demo(cfg: DictConfig, block: bool = True) -> Any:
    """Serve the page at http://host:port/ (blocks until Ctrl-C unless ``block`` is false)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise DataError(
            "the demo needs gradio: `make setup`, or `pip install 'celeba-gender[demo]'`"
        ) from None
    app = build_app(Demo(cfg))
    try:
        app.queue().launch(
            server_name=cfg.host,
            server_port=cfg.port,
            max_file_size=f"{cfg.max_upload_mb}mb",
            prevent_thread_lock=not block,
            share=False,
        )
    except OSError as error:  # the port is taken, or the host is not this machine's
        raise DataError(f"host={cfg.host} port={cfg.port}: cannot listen there ({error})") from None
    return app


@hydra.main(config_path=str(CONFIG_DIR), config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_demo(cfg)
    except (DataError, DetectorUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
