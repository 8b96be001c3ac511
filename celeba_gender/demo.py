"""``python -m celeba_gender.demo ckpt_path=PATH`` (or ``celeba-gender-demo``): a local web page
(Gradio) that labels the faces of an uploaded photo or a webcam snapshot.

The page names the model it runs (backbone, treatment, experiment, its validation and test
accuracy: from its run folder's metrics.json and validation predictions) and shows the photo
with each face boxed and labelled with P(male), a table of the faces and their aligned crops,
each beside its heat map with a colour bar and a caption (``explain.explained_picture``, as
predict's explained/*.png; predict's ``explain_*`` settings; ``explain=false`` leaves them
out). An ONNX model (no gradients) or a missing captum: the crops alone, and one line on the
page saying why. Numbers are rounded as predict's (``decimals``).

PATH is a checkpoint, an ONNX export, one run's folder or a sweep folder: with several models
a picker offers every job's ``checkpoints/best.ckpt``, the validation-best run first chosen
(``analysis.report.validation_best_run``, as the analysis' report names it), and a second
picker shows another model's answer on the same photo beside the first.

Photos go through predict's own pipeline (``inference.labelling.predict_photos``: predict's decode,
MTCNN, alignment, the run's evaluation transform) with predict's settings (conf/demo.yaml takes
conf/predict.yaml's values). A photo that cannot be used (not an image, over ``max_pixels``,
no face) gets a message on the page and a row saying why, never a traceback.

The prediction is also the named API endpoint ``predict`` (photo in, and optionally the model's
name), for ``gradio_client``; it returns what the page shows: the annotated photo, the faces
table, the crops with their heat maps (captioned), the message and the model's description::

    annotated, faces_table, crops, message, model = Client("http://127.0.0.1:7860/").predict(
        handle_file("me.jpg"), api_name="/predict"
    )

Local only: it listens on 127.0.0.1 (``host``), sends no analytics and loads nothing from the
internet (the page's fonts and scripts come with the gradio package).
"""

from __future__ import annotations

from celeba_gender.quiet_interrupt import quiet_imports

with quiet_imports(__name__):  # a Ctrl-C while these import (seconds) ends the command at once
    import errno
    import logging
    import os
    import socket
    import sys
    import threading
    import time
    from collections import OrderedDict
    from dataclasses import dataclass, field
    from pathlib import Path
    from typing import Any

    import hydra
    import pandas as pd
    from omegaconf import DictConfig, OmegaConf
    from PIL import Image

    from celeba_gender.config import CONFIG_DIR
    from celeba_gender.config_schema import ConfigError, validate
    from celeba_gender.data import DataError
    from celeba_gender.demo_files import (
        PhotoIntake,
        PrivateFolder,
        RequestSizeLimit,
        attach,
        request_limit_bytes,
        upload_limit_bytes,
    )
    from celeba_gender.inference.drawing import annotate
    from celeba_gender.inference.faces import DetectorUnavailable, FaceAligner
    from celeba_gender.inference.labelling import Decimals, predict_photos, printable_logs
    from celeba_gender.inference.predictor import GenderPredictor
    from celeba_gender.inference.schema import DemoSchema
    from celeba_gender.models.checkpoints import CheckpointError
    from celeba_gender.startup import start_command
    from celeba_gender.stop_signals import STOP_SIGNAL_NAMES, StopSignalHandler

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
    model: LoadedModel | None = None  # the model that answered (Demo.explained uses it)
    faces: list[dict] = field(default_factory=list)  # the rows of the crops, in their order
    about: str = ""  # the model that answered, in words (Demo.describe)


@dataclass
class LoadedModel:
    """A model of the page with what explains it: a CropExplainer, or why there is none."""

    predictor: GenderPredictor
    explainer: Any = None  # inference.explain.CropExplainer
    no_maps: str = ""  # why there are no heat maps ("" when explain=false or there is one)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=list(TABLE_COLUMNS))


class Demo:
    """The page's work: a photo and a model's name in, an Answer out."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.models = find_models(cfg.ckpt_path)
        self.explain = bool(cfg.get("explain"))
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        # One request at a time on the models: Grad-CAM hooks a layer of the model, and the
        # page's two columns (or two visitors) would otherwise run through it at once.
        self._lock = threading.RLock()
        self.aligner = FaceAligner.from_config(cfg.alignment, cfg.device) if cfg.detect else None
        self.decimals = Decimals.from_config(cfg.get("decimals"))
        self.runs = runs_of_models(cfg.ckpt_path, self.models)
        self.default_model = self._first_loadable()

    def _first_loadable(self) -> str:
        """The validation-best run's model if it loads (``validation_best_run``), else the
        first that loads: a sweep's unreadable checkpoint (a failed job's) stays a choice that
        says what is wrong when picked; when none loads, the first one's error stops the
        command."""
        from celeba_gender.analysis.report import validation_best_run

        best = None if self.runs.empty else validation_best_run(self.runs)
        order = list(self.models)
        if best is not None and best["model_name"] in self.models:
            order.remove(best["model_name"])
            order.insert(0, best["model_name"])
        problems: list[CheckpointError] = []
        for name in order:
            try:
                self.model(name)
                return name
            except CheckpointError as problem:
                log.warning("%s is not the default model: %s", name, problem)
                problems.append(problem)
        raise problems[0]

    def describe(self, name: str) -> str:
        """The named model in words: its job, backbone, treatment and experiment, and the
        validation and test accuracy its run recorded (when its run folder has them and they
        are of this checkpoint), or what is known without them."""
        run = self._run(name)
        if run is None or run["status"] != "ok":
            why = (
                "no run folder with a metrics.json"
                if run is None
                else run["error"]
                if run["status"] == "missing" and run["error"]
                else f"its run's status is {run['status']}"
            )
            try:
                backbone = self.predictor(name).backbone
            except CheckpointError as error:
                return f"{name}: {error}"
            return f"{name}: {backbone} ({why}; accuracies unknown)"
        experiment = run.get("experiment")
        words = [f"{run['model']}, {run['treatment']}"]
        if isinstance(experiment, str) and experiment:
            words[0] += f", experiment {experiment}"
        val_images = "" if pd.isna(run["val_images"]) else f" of {int(run['val_images'])} images"
        test_images = "" if pd.isna(run["test_images"]) else f" of {int(run['test_images'])} images"
        words.append(
            f"validation accuracy {_percent(run['val_acc'])}{val_images}, "
            f"test accuracy {_percent(run['acc'])}{test_images}"
        )
        tested = _tested_checkpoint(run)
        if tested is None or tested != self.models[name].resolve():
            words.append("measured on other weights of its run than this checkpoint's")
        return f"{name}: " + "; ".join(words)

    def _run(self, name: str) -> pd.Series | None:
        if self.runs.empty:
            return None
        rows = self.runs[self.runs["model_name"] == name]
        return None if rows.empty else rows.iloc[0]

    def predictor(self, name: str) -> GenderPredictor:
        """The named model, loaded on first use; the ``models_in_memory`` most recent are kept."""
        return self.model(name).predictor

    def model(self, name: str) -> LoadedModel:
        """The named model and its explainer, loaded on first use (see ``predictor``)."""
        if name not in self.models:
            raise DataError(f"model {name!r} is not one of {', '.join(self.models)}")
        with self._lock:
            if name not in self._loaded:
                predictor = GenderPredictor.load(
                    self.models[name], self.cfg.device, self.cfg.batch_size
                )
                self._loaded[name] = self._with_explainer(predictor)
                while len(self._loaded) > max(1, self.cfg.models_in_memory):
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(name)
            return self._loaded[name]

    def _with_explainer(self, predictor: GenderPredictor) -> LoadedModel:
        if not self.explain:
            return LoadedModel(predictor)
        from celeba_gender.inference.explain import CropExplainer, ExplainUnavailable

        try:
            explainer = CropExplainer.from_predictor(
                predictor, self.cfg.explain_target_layer, self.cfg.explain_toward
            )
        except ExplainUnavailable as reason:  # ONNX, no captum, no such layer: crops alone
            return LoadedModel(predictor, no_maps=f"No heat maps: {reason}")
        return LoadedModel(predictor, explainer)

    def answer(self, photo: str | None, model: str | None = None) -> Answer:
        """Label the faces of the photo file (an upload) with the named model (default: the
        first), crops captioned but without heat maps (``explained`` adds them: the API
        endpoint returns no maps, so it does not wait for them). Whatever goes wrong is the
        answer's message, never an exception."""
        if not photo:
            return Answer(None, empty_table(), message=EMPTY_MESSAGE)
        path = Path(photo)
        model = model or self.default_model
        try:
            with self._lock:
                loaded = self.model(model)
                result = next(
                    predict_photos(
                        [path],
                        loaded.predictor,
                        self.aligner,
                        self.cfg.threshold,
                        self.cfg.max_pixels,
                        self.decimals,
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
        crops = [  # result.crops: one per face number (all ok, or the photo's error rows)
            (
                result.crops[row["face"]],
                f"face {row['face']}: {row['label']}, P(male) {row['p_male']}",
            )
            for row in faces
        ]
        if faces:
            message = f"{model}: " + ", ".join(
                f"face {row['face']} {row['label']} (P(male) {row['p_male']})" for row in faces
            )
        else:
            message = self._readable(result.rows[0].get("error") or "no face found", path)
        annotated = annotate(result.photo, result.rows) if result.photo is not None else None
        return Answer(annotated, table, crops, message, loaded, faces, self.describe(model))

    def explained(self, answer: Answer) -> tuple[list[tuple[Image.Image, str]], str]:
        """The page's gallery and message for an answer: each face's crop beside its heat map,
        with a colour bar and captioned (``explain.explained_picture``), or the crops alone with
        one line saying why there are no maps."""
        loaded = answer.model
        if not answer.crops or loaded is None or not self.explain:
            return answer.crops, answer.message
        from celeba_gender.inference.explain import explained_picture, face_caption

        if loaded.explainer is None:
            return answer.crops, f"{answer.message}\n\n{_one_line(loaded.no_maps)}"
        try:
            with self._lock:
                maps = loaded.explainer.explain([crop for crop, _ in answer.crops])
        except Exception as error:  # noqa: BLE001 - the label matters more than the picture
            log.exception("no heat maps: %s", error)
            return answer.crops, f"{answer.message}\n\n{_one_line(f'No heat maps: {error}')}"
        pictures = []
        for (crop, _), heat_map, row in zip(answer.crops, maps, answer.faces, strict=True):
            caption = face_caption(
                row["face"], row["label"], row["p_male"], self.cfg.explain_toward
            )
            picture = explained_picture(
                crop, heat_map, caption, self.cfg.explain_alpha, self.cfg.explain_colormap
            )
            pictures.append((picture, caption.replace("\n", "; ")))
        return pictures, answer.message

    @staticmethod
    def _readable(message: str, upload: Path) -> str:
        """The upload's own name, not the server's temporary path, in a message."""
        return message.replace(str(upload), upload.name)


def _percent(value: Any) -> str:
    return "unknown" if value is None or pd.isna(value) else f"{100 * float(value):.1f}%"


def _tested_checkpoint(run: pd.Series) -> Path | None:
    """The checkpoint the run's recorded accuracies are of, found in its folder now; None when
    it kept none (tested on its last epoch's weights) or it is gone."""
    from celeba_gender.analysis.heat_maps import evaluated_checkpoint

    try:
        return evaluated_checkpoint(run["run_dir"]).resolve()
    except DataError:
        return None


def runs_of_models(path: str | Path, models: dict[str, Path]) -> pd.DataFrame:
    """The run of each model of the page (``collect_runs``' row, with its validation accuracy
    and the model's name in ``model_name``): a sweep's or a run folder's jobs, or the run
    folder of a checkpoint (``<run>/checkpoints/<name>.ckpt``). Empty when there is none (an
    ONNX export, a checkpoint outside a run folder)."""
    from celeba_gender.analysis.collect import METRICS_FILE, collect_runs
    from celeba_gender.analysis.report import with_validation_accuracy

    path = Path(path).expanduser()
    if path.is_dir():
        folders = {Path(model).parent.parent: name for name, model in models.items()}
    else:
        run_dir = path.parent.parent
        if path.parent.name != "checkpoints" or not (run_dir / METRICS_FILE).is_file():
            return pd.DataFrame()
        folders = {run_dir: path.name}
        path = run_dir
    try:
        runs = with_validation_accuracy(collect_runs(path))
    except DataError as error:
        log.warning("%s: no accuracies for the page (%s)", path, error)
        return pd.DataFrame()
    names = {str(folder): name for folder, name in folders.items()}
    runs["model_name"] = runs["run_dir"].map(names)
    return runs[runs["model_name"].notna()].reset_index(drop=True)


def _photo_input(intake: PhotoIntake) -> Any:
    """An image upload or webcam snapshot, handed to the page's function as its file through the
    one bounded way in (``demo_files.attach``): predict's own decode reads it, so a file that is
    not an image (or a decompression bomb) gets predict's message instead of Gradio's error."""
    import gradio as gr

    photo = gr.Image(label="Photo", sources=["upload", "webcam"], type="filepath", elem_id="photo")
    return attach(photo, intake)


def build_app(demo: Demo, intake: PhotoIntake) -> Any:
    """The page (a gradio.Blocks), not yet launched; photos come in through ``intake``. Its API
    endpoint ``predict`` is the page's own event: it returns what the page shows, each output
    under its own label."""
    import gradio as gr

    several = len(demo.models) > 1
    names = list(demo.models)

    def predict(photo: str | None, model: str | None) -> tuple[Any, pd.DataFrame, list, str, str]:
        model = model or demo.default_model
        answer = demo.answer(photo, model)
        crops, message = demo.explained(answer)
        return answer.annotated, answer.table, crops, message, answer.about or demo.describe(model)

    def compare(photo: str | None, model: str | None) -> tuple[Any, pd.DataFrame, list, str]:
        if not photo or not model or model == NO_MODEL:
            return None, empty_table(), [], ""
        answer = demo.answer(photo, model)
        crops, message = demo.explained(answer)
        return answer.annotated, answer.table, crops, f"{message}\n\n{answer.about}"

    def gallery(label: str, elem_id: str) -> Any:
        return gr.Gallery(
            label=label,
            columns=2,
            height=340,
            object_fit="contain",
            fit_columns=False,
            elem_id=elem_id,
        )

    with gr.Blocks(title="celeba-gender demo", analytics_enabled=False) as app:
        gr.Markdown(
            "# celeba-gender\nP(male) of each face in a photo, from "
            + (f"{len(names)} models of {demo.cfg.ckpt_path}" if several else names[0])
        )
        with gr.Row():
            photo = _photo_input(intake)
            with gr.Column():
                model_a = gr.Dropdown(
                    names, value=demo.default_model, label="Model", visible=several
                )
                about = gr.Markdown(
                    demo.describe(demo.default_model), label="Model description", elem_id="model"
                )
                model_b = gr.Dropdown(
                    [NO_MODEL, *names],
                    value=next((n for n in names if n != demo.default_model), NO_MODEL),
                    label="Compare with",
                    visible=several,
                )
                run = gr.Button("Label faces", variant="primary")
        message = gr.Markdown(EMPTY_MESSAGE, label="Message", elem_id="message")
        with gr.Row():
            with gr.Column():
                annotated_a = gr.Image(label="Annotated photo", type="pil", elem_id="annotated")
                table_a = gr.Dataframe(
                    headers=list(TABLE_COLUMNS),
                    label="Faces table",
                    interactive=False,
                    elem_id="table",
                )
                # The aligned crops the model sees, each beside its heat map (Demo.explained).
                crops_a = gallery("Aligned crops and heat maps", "crops")
            with gr.Column(visible=several):
                annotated_b = gr.Image(label="Compared model", type="pil", elem_id="annotated_b")
                table_b = gr.Dataframe(
                    headers=list(TABLE_COLUMNS), interactive=False, elem_id="table_b"
                )
                crops_b = gallery("Aligned crops and heat maps", "crops_b")
                message_b = gr.Markdown(elem_id="message_b")
        gr.on(
            triggers=[photo.change, run.click, model_a.change],
            fn=predict,
            inputs=[photo, model_a],
            outputs=[annotated_a, table_a, crops_a, message, about],
            api_name="predict",
        )
        if several:
            gr.on(
                triggers=[photo.change, run.click, model_b.change],
                fn=compare,
                inputs=[photo, model_b],
                outputs=[annotated_b, table_b, crops_b, message_b],
                api_visibility="private",
            )
    return app


def check_listening(host: str, port: Any) -> None:
    """That the page can listen at host:port, said in one line before any model is loaded
    (Gradio's own error blames the port for an unknown host, and names its own settings)."""
    try:  # the port's range is the schema's (inference/schema.py); whether it is free, here
        family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise DataError(
            f"host={host}: not a name or address this machine can resolve ({error}); use "
            "127.0.0.1 (this machine only) or 0.0.0.0 (every network)"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise DataError(
                    f"port={port}: another program listens there on {host}; pass another "
                    f"port (e.g. port={port + 1 if port < 65535 else 7860})"
                ) from None
            raise DataError(
                f"host={host} port={port}: cannot listen there ({error.strerror}); host must "
                "be an address of this machine (127.0.0.1, or 0.0.0.0 for every network)"
            ) from None


def run_demo(cfg: DictConfig) -> None:
    """Serve the page at http://host:port/ until Ctrl-C (or SIGTERM); the visitors' photos and
    the page's pictures are kept in a private folder, deleted by age and when it stops."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise DataError(
            "ckpt_path is missing: python -m celeba_gender.demo ckpt_path=PATH (a .ckpt, an "
            ".onnx export, a run folder or a sweep folder)"
        )
    validate(cfg, DemoSchema)  # before anything is loaded or opened
    check_listening(cfg.host, cfg.port)
    max_upload_bytes = upload_limit_bytes(cfg.max_upload_mb)
    try:
        with quiet_imports(__name__):  # seconds
            import gradio  # noqa: F401
    except ImportError:
        raise DataError(
            "the demo needs gradio: `make setup`, or `pip install 'celeba-gender[demo]'`"
        ) from None
    from starlette.middleware import Middleware

    folder = PrivateFolder.create(cfg.files.folder, cfg.files.max_age_minutes)
    # Any other stop signal (a scheduler's SIGTERM, a closed terminal's SIGHUP, ...) ends the
    # demo as Ctrl-C does: through the cleanup below. One ignored on purpose stays ignored.
    others = [name for name in STOP_SIGNAL_NAMES if name != "SIGINT"]
    stops = StopSignalHandler(others, raises=lambda signum: SystemExit(128 + signum))
    with stops, folder.for_gradio():
        demo = Demo(cfg)
        app = build_app(demo, PhotoIntake(folder.path, cfg.max_upload_mb))
        limit = request_limit_bytes(cfg.max_upload_mb)
        try:
            # quiet: Gradio's own lines would tell a command-line user to set share=True (a
            # public link through Gradio's servers); the page's address is printed below.
            # show_error: whatever refuses a request reaches the client as its message.
            app.queue().launch(
                server_name=cfg.host,
                server_port=cfg.port,
                max_file_size=max_upload_bytes,
                prevent_thread_lock=True,
                share=False,
                quiet=True,
                show_error=True,
                app_kwargs={
                    "middleware": [
                        Middleware(
                            RequestSizeLimit, max_bytes=limit, max_upload_mb=cfg.max_upload_mb
                        )
                    ]
                },
            )
        except OSError as error:  # the port is taken, or the host is not this machine's
            raise DataError(
                f"host={cfg.host} port={cfg.port}: cannot listen there ({error})"
            ) from None
        try:
            print(f"celeba-gender demo of {demo.describe(demo.default_model)}", flush=True)
            print(f"* Running on local URL:  {app.local_url}  (Ctrl-C stops it)", flush=True)
            print(f"  photos are kept in {folder.path} (0700) until it stops", flush=True)
            while app.is_running:
                time.sleep(0.2)
        finally:
            app.close()


@hydra.main(config_path=str(CONFIG_DIR), config_name="demo", version_base="1.3")
def _command(cfg: DictConfig) -> None:
    try:
        run_demo(cfg)
    except (ConfigError, DataError, DetectorUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    """The command: registration (resolvers, log filters, Gradio's settings) happens here."""
    start_command()
    printable_logs()
    # Read by Gradio when it is imported: no usage statistics, no version check leave the
    # machine (Blocks(analytics_enabled=False) says it again for the page).
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    _command()


if __name__ == "__main__":
    main()
