"""The HTTP service: ``POST /predict``, ``GET /health``, ``GET /info`` and a web page at ``/``.

Inference runs in a thread pool, off the event loop. Admission is bounded: at most
``workers + queue_size`` requests are being predicted or waiting; beyond that the answer is 503
with ``Retry-After`` instead of unbounded memory growth. Bad uploads get a 4xx JSON error that
says what was wrong, and the service keeps working for the next request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
from importlib import resources
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from unet_resnet._version import __version__
from unet_resnet.errors import ConfigError
from unet_resnet.inference import Segmenter
from unet_resnet.inference.formats.base import image_quality
from unet_resnet.integrations.label_studio import LabelStudioSettings
from unet_resnet.serve import label_studio, oip
from unet_resnet.serve.service import (
    STATUS_FOR_ERROR,
    HTTPProblem,
    Limits,
    Service,
    error_responses,
    status_for,
)
from unet_resnet.visualize import colorize, overlay

__all__ = ["QUALITY_HEADER", "STATUS_FOR_ERROR", "create_app", "status_for"]

FORMATS = ("png", "json", "overlay")
#: the response header holding the mask's quality estimate (expected mIoU, 0-1) on PNG answers
QUALITY_HEADER = "X-Unet-Resnet-Quality"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def create_app(
    segmenter: Segmenter,
    *,
    max_upload_mb: float = 20.0,
    max_pixels: int = 40_000_000,
    workers: int = 1,
    queue_size: int = 8,
    max_decoded_mb: float | None = None,
    body_timeout_s: float = 30.0,
    model_name: str = oip.DEFAULT_MODEL_NAME,
    label_studio_settings: LabelStudioSettings | None = None,
) -> FastAPI:
    """Build the FastAPI app around a loaded :class:`Segmenter`.

    Limits (see the README's "Limits and safety"): ``max_upload_mb`` for the request body,
    counted while it streams; ``max_pixels`` and ``max_decoded_mb`` (default: 16 bytes per
    allowed pixel) for the decoded image, both checked from the header before decoding;
    ``body_timeout_s`` for the whole body to arrive; ``workers + queue_size`` requests
    predicted or waiting, beyond that 503. The same limits hold on every route: our own
    (``/predict``), the Open Inference Protocol v2 (``/v2/...``, the model called
    ``model_name``) and the Label Studio ML backend (``/label-studio/...``, configured by
    ``label_studio_settings``).
    """
    if segmenter.task.overlapping:
        raise ConfigError(
            "The service returns one class per pixel; this is a multilabel model (overlapping "
            "classes). Use `unet-resnet predict` (a band per class) or Segmenter.predict_proba."
        )
    limits = Limits(
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_decoded_mb=max_decoded_mb,
        body_timeout_s=body_timeout_s,
        workers=workers,
        queue_size=queue_size,
    )
    service = Service(segmenter, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.shutdown()

    app = FastAPI(title="unet-resnet", version=__version__, lifespan=lifespan)
    classes = segmenter.classes
    static = resources.files("unet_resnet.serve") / "static"

    @app.exception_handler(HTTPProblem)
    async def problem(_: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Query values outside their documented ranges: 400 in the service's error format.
        details = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ())[1:])}: {e.get('msg')}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"Invalid request: {details}."}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "in_flight": service.in_flight, "capacity": limits.capacity}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "classes": [
                {"index": i, "name": n, "color": list(c)}
                for i, (n, c) in enumerate(zip(classes.names, classes.colors, strict=True))
            ],
            "ignore_index": classes.ignore_index,
            "in_channels": segmenter.in_channels,
            "model_config": segmenter.config,
            "device": str(segmenter.device),
            "precision": segmenter.precision,
            "limits": limits.describe(),
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text())

    @app.get("/static/{name}", responses=error_responses(404))
    async def asset(name: str) -> Response:
        types = {".js": "text/javascript", ".css": "text/css"}
        suffix = name[name.rfind(".") :] if "." in name else ""
        if suffix not in types or "/" in name or not (static / name).is_file():
            raise HTTPProblem(404, f"No static file {name!r}.")
        return Response((static / name).read_bytes(), media_type=types[suffix])

    async def read_upload(request: Request) -> bytes:
        body = await service.read_body(request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            # The form is parsed from the bounded body already read, never from the socket.
            request._body = body
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as exc:
                raise HTTPProblem(400, f"Malformed multipart upload: {exc}") from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPProblem(400, "Multipart upload needs the image in the field 'file'.")
            data = await upload.read()
        else:
            data = body
        if len(data) > limits.max_bytes:
            raise HTTPProblem(413, f"Upload of {len(data)} bytes is over {max_upload_mb} MB.")
        if not data:
            raise HTTPProblem(
                400,
                "Empty upload: send the image as multipart field 'file' or "
                "as the raw request body.",
            )
        return data

    def run(data: bytes, tta: bool, tile_size: int | None):
        image = service.decode(data)
        # the mask and its quality estimate (expected mIoU, what predict's review queue sorts
        # by), from one pass
        _, labels, quality = image_quality(segmenter, image, tta=tta, tile_size=tile_size)
        return image, labels, quality

    @app.post(
        "/predict",
        responses={
            200: {
                "description": "the mask (PNG), the overlay (PNG) or the labels (JSON)",
                "content": {"image/png": {}, "application/json": {}},
            },
            **error_responses(400, 408, 413, 415, 422, 503),
            422: error_responses(422)[422],
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "the image: raw bytes, or a multipart form with a file field",
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in ("application/octet-stream", "image/png", "image/jpeg")
                },
            }
        },
    )
    async def predict(
        request: Request,
        format: Literal["png", "json", "overlay"] = "png",
        tta: bool = False,
        tile_size: int | None = Query(None, ge=32, le=8192),
        alpha: float = Query(0.5, ge=0, le=1, allow_inf_nan=False),
        mask: bool = False,
    ) -> Response:
        if format not in FORMATS:
            raise HTTPProblem(
                400, f"Unknown format {format!r}; choose one of {', '.join(FORMATS)}."
            )
        if tile_size is not None and not 32 <= tile_size <= 8192:
            raise HTTPProblem(400, "tile_size must be between 32 and 8192.")
        if not (math.isfinite(alpha) and 0 <= alpha <= 1):
            raise HTTPProblem(400, f"alpha must be a number from 0 to 1, got {alpha}.")
        # A request takes an inference slot only once its body has arrived: slow uploads
        # cannot lock the service (they time out on their own, see body_timeout_s).
        data = await read_upload(request)
        image, labels, quality = await service.run(run, data, tta or segmenter.tta, tile_size)
        return _respond(image, labels, quality, format, alpha, mask)

    def _respond(image, labels, quality, format, alpha, with_mask) -> Response:
        # PNG answers carry the quality estimate in a header, JSON answers in the body
        header = {QUALITY_HEADER: f"{quality['quality']:.6f}"}
        match format:
            case "png":
                img = Image.fromarray(labels.astype(np.uint8), mode="P")
                flat = [v for c in classes.colors for v in c]
                img.putpalette(flat + [0] * (768 - len(flat)))
                return Response(_png(img), media_type="image/png", headers=header)
            case "overlay":
                blended = overlay(
                    image, labels, classes.colors, alpha=alpha, ignore_index=classes.ignore_index
                )
                return Response(
                    _png(Image.fromarray(blended)), media_type="image/png", headers=header
                )
        counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(classes))
        total = int(labels.size)
        body: dict[str, Any] = {
            "width": int(labels.shape[1]),
            "height": int(labels.shape[0]),
            "classes": [
                {
                    "index": i,
                    "name": n,
                    "color": list(c),
                    "pixels": int(counts[i]),
                    "fraction": float(counts[i] / total),
                }
                for i, (n, c) in enumerate(zip(classes.names, classes.colors, strict=True))
            ],
            "quality": quality,
        }
        if with_mask:
            rgba = np.dstack(
                [
                    colorize(labels, classes.colors, classes.ignore_index),
                    np.where(labels == 0, 0, 255).astype(np.uint8),
                ]
            )
            body["mask_png"] = base64.b64encode(_png(Image.fromarray(rgba, "RGBA"))).decode()
        return JSONResponse(body)

    oip.add_routes(app, service, model_name)
    label_studio.add_routes(app, service, label_studio_settings or LabelStudioSettings())
    return app
