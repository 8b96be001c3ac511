"""The demo's files: the one bounded way a visitor's photo comes in, and the private folder it
and the page's pictures live in.

Every form a photo can take reaches ``PhotoIntake.file_of`` before anything decodes it: an upload
(Gradio's upload route, bounded by ``max_upload_mb``), a ``data:`` URL or bare base64 (its size
checked on the encoded text, then only base64-decoded into a file: predict's own decode reads
the image's header and refuses one over ``max_pixels`` before decoding pixels), or a URL (refused:
the demo fetches nothing from the network). The request carrying it is bounded first
(``RequestSizeLimit``), so a huge body is refused before it is read. What is wrong reaches the
client as a message (a ``gradio.Error``), never ``{"error": null}``.

Uploads, decoded photos and annotated pictures go to a folder of the demo's own (``PrivateFolder``,
mode 0700, so other users of a shared machine cannot read people's faces), emptied of files older
than ``files.max_age_minutes`` while the demo runs and deleted when it stops.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celeba_gender.data import DataError

log = logging.getLogger(__name__)
MEBIBYTE = 2**20
GRADIO_FOLDER_VARIABLE = "GRADIO_TEMP_DIR"  # where Gradio keeps uploads and returned files
# A data: URL or base64 text is 4/3 of the photo's bytes; the JSON around it a little more.
BASE64_GROWTH = 4 / 3
REQUEST_OVERHEAD_BYTES = 64 * 1024
SWEEP_EVERY_S = 60  # how often old files are looked for (at most; sooner for a shorter age)
# A body over the limit by at most this factor is read (and dropped) before the refusal, so the
# client reads the message; a bigger one is refused at once (its client may see a broken pipe).
DRAIN_AT_MOST = 8
URL_SCHEMES = ("http://", "https://", "ftp://", "file://")


def upload_limit_bytes(max_upload_mb: float) -> int:
    """``max_upload_mb`` (checked by the demo's schema) in bytes: the one number every way in
    is bounded by."""
    return int(max_upload_mb * MEBIBYTE)


def request_limit_bytes(max_upload_mb: float) -> int:
    """The largest request the demo reads: a photo of ``max_upload_mb`` as base64, in JSON."""
    return int(upload_limit_bytes(max_upload_mb) * BASE64_GROWTH) + REQUEST_OVERHEAD_BYTES


def refuse(message: str) -> Exception:
    """The error whose message the client receives (Gradio shows an ``Error``'s message)."""
    import gradio as gr

    return gr.Error(message, print_exception=False)


class PrivateFolder:
    """A folder only this user can open (0700), for the demo's files: its files older than
    ``max_age_s`` are deleted every minute while the demo runs, and the folder when it stops."""

    def __init__(self, path: Path, max_age_s: float) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    @classmethod
    def create(cls, parent: str | Path | None, max_age_minutes: float) -> PrivateFolder:
        # max_age_minutes is checked by the demo's schema; the folder, here.
        if parent is not None:
            parent = Path(parent).expanduser()
            if not parent.is_dir():
                raise DataError(
                    f"files.folder={parent}: no such folder (give an existing folder, or null "
                    "for the system's temporary folder)"
                )
        try:  # mkdtemp: a new folder of mode 0700, named so that nobody can take it first
            path = Path(tempfile.mkdtemp(prefix="celeba-gender-demo-", dir=parent))
        except OSError as error:
            raise DataError(
                f"files.folder={parent}: cannot create a folder there ({error})"
            ) from None
        return cls(path, 60.0 * max_age_minutes)

    def delete_older(self, now: float | None = None) -> int:
        """Delete the files last changed over ``max_age_s`` ago and the folders left empty;
        return how many files went."""
        now = time.time() if now is None else now
        deleted = 0
        for folder, _, files in os.walk(self.path, topdown=False):
            for name in files:
                file = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    if now - file.lstat().st_mtime > self.max_age_s:
                        file.unlink()
                        deleted += 1
            if Path(folder) != self.path:
                with contextlib.suppress(OSError):  # not empty, or gone
                    Path(folder).rmdir()
        return deleted

    def start_sweeping(self) -> None:
        def sweep() -> None:
            while not self._stop.wait(min(SWEEP_EVERY_S, self.max_age_s)):
                try:
                    self.delete_older()
                except OSError as error:  # the next sweep tries again
                    log.warning("%s: old files not deleted (%s)", self.path, error)

        self._sweeper = threading.Thread(target=sweep, name="demo-file-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        shutil.rmtree(self.path, ignore_errors=True)

    @contextlib.contextmanager
    def for_gradio(self) -> Iterator[PrivateFolder]:
        """Gradio's uploads and returned files in this folder while the demo runs (Gradio reads
        GRADIO_TEMP_DIR when the page is built and served); swept, then deleted at the end."""
        previous = os.environ.get(GRADIO_FOLDER_VARIABLE)
        os.environ[GRADIO_FOLDER_VARIABLE] = str(self.path)
        self.start_sweeping()
        try:
            yield self
        finally:
            self.close()
            if previous is None:
                os.environ.pop(GRADIO_FOLDER_VARIABLE, None)
            else:
                os.environ[GRADIO_FOLDER_VARIABLE] = previous


class PhotoIntake:
    """Every form a photo comes in, to a file in the private folder, bounded before decoding."""

    def __init__(self, folder: Path, max_upload_mb: float) -> None:
        self.folder = folder
        self.max_upload_mb = max_upload_mb
        self.max_bytes = upload_limit_bytes(max_upload_mb)

    def file_of(self, payload: Any) -> str | None:
        """The photo's file (Gradio's image payload; None without a photo): see ``file``."""
        if payload is None:
            return None
        return self.file(getattr(payload, "path", None), getattr(payload, "url", None))

    def file(self, path: str | None = None, url: str | None = None) -> str:
        """The photo's file: an upload as Gradio stored it (``path``), or a ``data:`` URL or
        base64 text (``url``) written as the bytes it encodes. Anything else is refused with a
        message."""
        if path:  # an upload: a file Gradio stored in this demo's folder, nothing else
            if not Path(path).resolve().is_relative_to(self.folder.resolve()):
                raise refuse(
                    "not a photo this demo received: send a file upload, a data: URL or "
                    "base64 text of an image"
                )
            return str(path)
        if not isinstance(url, str) or not url:
            raise refuse(
                "no photo: send a file upload, a data: URL or base64 text of an image "
                f"(up to {self.max_upload_mb} MB)"
            )
        if url.lower().startswith(URL_SCHEMES):
            raise refuse(
                "the demo fetches nothing from the network: download the photo and send the "
                "file (an upload, a data: URL or base64 text)"
            )
        return str(self._decoded(url))

    def _decoded(self, text: str) -> Path:
        if text.startswith("data:"):
            header, comma, text = text.partition(",")
            if not comma or not header.endswith(";base64"):
                raise refuse("a data: URL of a photo must be base64 (data:image/...;base64,...)")
        encoded_mb = len(text) / BASE64_GROWTH / MEBIBYTE
        if len(text) > self.max_bytes * BASE64_GROWTH + 4:
            raise refuse(
                f"the photo is {encoded_mb:.1f} MB; the demo takes photos up to "
                f"{self.max_upload_mb} MB (max_upload_mb)"
            )
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise refuse("the photo's data is not valid base64") from None
        folder = self.folder / hashlib.sha256(data).hexdigest()
        folder.mkdir(exist_ok=True)
        file = folder / "photo"  # predict's decode reads the format from the bytes
        file.write_bytes(data)
        return file


class RequestSizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with status 413 and a
    message, before it is read into memory (by its Content-Length, or as it streams in)."""

    def __init__(self, app: Any, max_bytes: int, max_upload_mb: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"the request is over {max_bytes / MEBIBYTE:.1f} MB: the demo takes photos up to "
            f"{max_upload_mb} MB (max_upload_mb)"
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            if int(length) <= DRAIN_AT_MOST * self.max_bytes:
                await _discard_body(receive)  # read and dropped: the client then reads why
            await self._refuse(send)
            return
        received = 0
        started = False

        async def bounded_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, watched_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": self.message, "error": self.message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


async def _discard_body(receive: Any) -> None:
    """Read a request's body chunk by chunk, keeping none of it: a client (urllib, requests)
    sends its whole body before it reads the answer, and gets a broken pipe instead of the
    message when the server answers first and closes."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def photo_data_model() -> type:
    """Gradio's image payload, also taking a bare string (a data: URL, base64 or a URL) so that
    every form reaches ``PhotoIntake.file_of`` instead of a validation error without a message."""
    from gradio.data_classes import ImageData
    from pydantic import ConfigDict, model_validator

    class PhotoData(ImageData):
        model_config = ConfigDict(title="ImageData")

        @model_validator(mode="before")
        @classmethod
        def _text_is_a_url(cls, value: Any) -> Any:
            if isinstance(value, str):
                return {"url": value}
            if not isinstance(value, dict):
                return {}  # file_of: "no photo: send ..."
            return value

    return PhotoData


def attach(photo: Any, intake: PhotoIntake) -> Any:
    """Route the image component's input through ``intake``: the file Gradio stored for an
    upload is handed on undecoded (predict's decode reads it, so a non-image or a decompression
    bomb gets predict's message); every other form goes through ``PhotoIntake.file_of``; a URL
    is refused before Gradio would download it. Set on the instance: a subclass of a Gradio
    component makes Gradio write a .pyi file beside this module."""
    move = photo.async_move_resource_to_block_cache

    async def no_downloads(url_or_file_path: Any) -> Any:
        if isinstance(url_or_file_path, str) and url_or_file_path.lower().startswith(URL_SCHEMES):
            return intake.file(url=url_or_file_path)  # refused
        return await move(url_or_file_path)

    photo.data_model = photo_data_model()
    photo.async_move_resource_to_block_cache = no_downloads
    photo.preprocess = intake.file_of
    return photo
