"""The Open Inference Protocol (v2, KServe / Triton's HTTP/REST API) on the same service.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/1]``,
``.../ready`` and ``POST .../infer``. One input, ``image``: a ``UINT8`` tensor of shape
``[H, W, C]`` (or ``[N, H, W, C]``, N images of one size; ``[H, W]`` for one-band models),
as JSON ``data`` or in the binary tensor extension (``Inference-Header-Content-Length``,
which Triton's own clients use by default). Outputs: ``labels`` (class indices,
``[H, W]`` or ``[N, H, W]``, always) and ``probabilities`` (``FP32 [C, H, W]`` or
``[N, C, H, W]``, when asked for by name). Request parameters ``tta`` (bool) and
``tile_size`` (32-8192) as on ``/predict``; the response's parameter ``quality`` is each
image's quality estimate (expected mIoU, 0-1; a list for a batch). The body, pixel and
admission limits are the service's; errors are ``{"error": message}`` with the same statuses
as our own routes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from unet_resnet._version import __version__
from unet_resnet.inference.formats.base import image_quality
from unet_resnet.serve.service import HTTPProblem, Service, error_responses

__all__ = ["DEFAULT_MODEL_NAME", "HEADER_LENGTH", "add_routes"]

DEFAULT_MODEL_NAME = "unet-resnet"
#: The binary tensor extension's header: the length of the JSON part before the raw tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION = "1"
INPUT = "image"
OUTPUTS = ("labels", "probabilities")
#: Protocol datatype -> numpy dtype for what we send and accept.
DTYPES = {"UINT8": np.uint8, "INT32": np.int32, "FP32": np.float32}


def _tensor_schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "parameters": {"type": "object"},
            **(extra or {}),
        },
        "required": ["name"],
    }


REQUEST_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {
            "type": "array",
            "items": _tensor_schema({"data": {"type": "array", "items": {"type": "integer"}}}),
        },
        "outputs": {"type": "array", "items": _tensor_schema()},
    },
    "required": ["inputs"],
}
RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _tensor_schema({"data": {"type": "array"}})},
    },
    "required": ["model_name", "outputs"],
}


def _label_datatype(n_classes: int) -> str:
    return "UINT8" if n_classes <= 256 else "INT32"


def add_routes(app: FastAPI, service: Service, model_name: str = DEFAULT_MODEL_NAME) -> None:
    """Add the protocol's routes for the service's model, called ``model_name``."""
    segmenter = service.segmenter
    channels = segmenter.in_channels
    n_classes = len(service.classes)
    labels_type = _label_datatype(n_classes)

    def check_model(name: str, version: str | None = None) -> None:
        if name != model_name:
            raise HTTPProblem(404, f"No model {name!r} here; this server has {model_name!r}.")
        if version is not None and version != VERSION:
            raise HTTPProblem(
                404, f"Model {name!r} has no version {version!r}; it has {VERSION!r}."
            )

    def metadata() -> dict[str, Any]:
        image_shape = [-1, -1, channels] if channels > 1 else [-1, -1]
        return {
            "name": model_name,
            "versions": [VERSION],
            "platform": f"unet-resnet_{getattr(segmenter.model, 'backend', 'torch')}",
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": image_shape}],
            "outputs": [
                {"name": "labels", "datatype": labels_type, "shape": [-1, -1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [n_classes, -1, -1]},
            ],
            "parameters": {"classes": list(service.classes.names)},
        }

    @app.get("/v2", tags=["open inference protocol"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "unet-resnet", "version": __version__, "extensions": ["binary_data"]}

    @app.get("/v2/health/live", tags=["open inference protocol"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open inference protocol"])
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/models/{name}", tags=["open inference protocol"], responses=error_responses(404))
    async def model_metadata(name: str) -> dict[str, Any]:
        check_model(name)
        return metadata()

    @app.get(
        "/v2/models/{name}/versions/{version}",
        tags=["open inference protocol"],
        responses=error_responses(404),
    )
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        check_model(name, version)
        return metadata()

    @app.get(
        "/v2/models/{name}/ready", tags=["open inference protocol"], responses=error_responses(404)
    )
    async def model_ready(name: str) -> dict[str, Any]:
        check_model(name)
        return {"name": name, "ready": True}

    @app.get(
        "/v2/models/{name}/versions/{version}/ready",
        tags=["open inference protocol"],
        responses=error_responses(404),
    )
    async def model_version_ready(name: str, version: str) -> dict[str, Any]:
        check_model(name, version)
        return {"name": name, "ready": True}

    infer_doc = dict(
        tags=["open inference protocol"],
        responses={
            200: {
                "description": "the outputs: JSON, or JSON then raw tensors (binary extension)",
                "content": {
                    "application/json": {"schema": RESPONSE_SCHEMA},
                    "application/octet-stream": {},
                },
            },
            **error_responses(400, 404, 408, 413, 415, 422, 503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "an inference request (JSON; or JSON then raw tensors with the "
                f"{HEADER_LENGTH} header)",
                "content": {
                    "application/json": {"schema": REQUEST_SCHEMA},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )

    async def infer(request: Request, name: str, version: str | None) -> Response:
        check_model(name, version)
        body = await service.read_body(request)
        header_length = request.headers.get(HEADER_LENGTH.lower())
        header, binary = _split(body, header_length)
        result = await service.run(_infer, header, binary)
        return _response(result)

    @app.post("/v2/models/{name}/infer", **infer_doc)
    async def model_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", **infer_doc)
    async def model_version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    # -- the request ---------------------------------------------------------------------------
    def _infer(header: bytes, binary: bytes) -> dict[str, Any]:
        request = _parse(header)
        params = request.get("parameters") or {}
        if not isinstance(params, dict):
            raise HTTPProblem(400, "'parameters' must be an object.")
        tta, tile_size = _options(params)
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise HTTPProblem(400, f"Send exactly one input, {INPUT!r} (a UINT8 image tensor).")
        images, batched = _image(inputs[0], binary)
        wanted = _wanted(request.get("outputs"), params)
        labels, probs, quality = [], [], []
        for image in images:
            p, mask, estimate = image_quality(segmenter, image, tta=tta, tile_size=tile_size)
            if "probabilities" in wanted:
                probs.append(p.cpu().numpy())
            labels.append(mask)
            quality.append(estimate["quality"])
        outputs = []
        for out_name, binary_out in wanted.items():
            arrays = labels if out_name == "labels" else probs
            stacked = np.stack(arrays) if batched else arrays[0]
            datatype = labels_type if out_name == "labels" else "FP32"
            outputs.append((out_name, stacked.astype(DTYPES[datatype]), datatype, binary_out))
        answer: dict[str, Any] = {"model_name": model_name, "model_version": VERSION}
        if isinstance(request.get("id"), str):
            answer["id"] = request["id"]
        answer["outputs"] = outputs
        # each image's quality estimate (expected mIoU, 0-1; what predict's review queue
        # sorts by), as a response parameter: one value, or a list for a batch
        answer["parameters"] = {"quality": quality if batched else quality[0]}
        return answer

    def _image(spec: dict[str, Any], binary: bytes) -> tuple[list[np.ndarray], bool]:
        if spec.get("name") != INPUT:
            raise HTTPProblem(400, f"The input is called {INPUT!r}, not {spec.get('name')!r}.")
        if spec.get("datatype") != "UINT8":
            raise HTTPProblem(
                400, f"Input {INPUT!r} must be UINT8 (image bytes), not {spec.get('datatype')!r}."
            )
        shape = spec.get("shape")
        expected = "[H, W, C]" if channels > 1 else "[H, W]"
        if (
            not isinstance(shape, list)
            or not 2 <= len(shape) <= 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise HTTPProblem(
                400, f"Input shape must be {expected} or [N, ...] with positive sizes, not {shape}."
            )
        batched = len(shape) == 4 or (len(shape) == 3 and channels == 1 and shape[-1] != 1)
        n = shape[0] if batched else 1
        height, width = shape[1:3] if batched else shape[:2]
        service.check_pixels(height, width * n, f"The input of {n} image(s)")
        count = math.prod(shape)
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if size != count or size > len(binary):
                raise HTTPProblem(
                    400,
                    f"binary_data_size {size} does not match shape {shape} ({count} bytes) and "
                    f"the {len(binary)} bytes after the JSON header.",
                )
            flat = np.frombuffer(binary[:count], dtype=np.uint8)
        else:
            data = spec.get("data")
            if data is None:
                raise HTTPProblem(400, f"Input {INPUT!r} has neither 'data' nor binary data.")
            try:
                flat = np.asarray(data).reshape(-1)
            except (ValueError, TypeError):
                raise HTTPProblem(400, "Input 'data' must be a (nested) list of numbers.") from None
            if flat.size != count:
                raise HTTPProblem(
                    400, f"Input 'data' has {flat.size} values; shape {shape} needs {count}."
                )
            if flat.size and (flat.dtype.kind not in "iu" or flat.min() < 0 or flat.max() > 255):
                raise HTTPProblem(400, "UINT8 input 'data' must hold integers from 0 to 255.")
            flat = flat.astype(np.uint8)
        array = flat.reshape(shape)
        return (list(array) if batched else [array]), batched

    def _wanted(outputs: Any, params: dict[str, Any]) -> dict[str, bool]:
        all_binary = params.get("binary_data_output") is True
        if outputs is None:
            return {"labels": all_binary}
        if not isinstance(outputs, list) or not outputs:
            raise HTTPProblem(400, "'outputs' must be a non-empty list of {name: ...} objects.")
        wanted: dict[str, bool] = {}
        for out in outputs:
            name = out.get("name") if isinstance(out, dict) else None
            if name not in OUTPUTS:
                raise HTTPProblem(
                    400, f"Unknown output {name!r}; this model has {', '.join(OUTPUTS)}."
                )
            p = out.get("parameters") or {}
            wanted[name] = all_binary or (isinstance(p, dict) and p.get("binary_data") is True)
        return wanted

    def _response(result: dict[str, Any]) -> Response:
        blobs: list[bytes] = []
        outputs = []
        for out_name, array, datatype, binary_out in result["outputs"]:
            entry: dict[str, Any] = {
                "name": out_name,
                "datatype": datatype,
                "shape": list(array.shape),
            }
            if binary_out:
                blob = np.ascontiguousarray(array).tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                if array.size * 4 > service.limits.max_decoded_bytes // 4:
                    raise HTTPProblem(
                        413,
                        f"Output {out_name!r} has {array.size} values, too many for JSON; ask "
                        'for it with parameters {"binary_data": true}.',
                    )
                entry["data"] = array.reshape(-1).tolist()
            outputs.append(entry)
        body = dict(result, outputs=outputs)
        if not blobs:
            return JSONResponse(body)
        header = json.dumps(body).encode()
        return Response(
            header + b"".join(blobs),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(header))},
        )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise HTTPProblem(
            400,
            f"{HEADER_LENGTH} must be the byte length of the JSON part (at most the "
            f"{len(body)} bytes sent), not {header_length!r}.",
        )
    n = int(header_length)
    return body[:n], body[n:]


def _parse(header: bytes) -> dict[str, Any]:
    if not header:
        raise HTTPProblem(400, "Empty inference request: send the JSON request body.")
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, f"The inference request is not valid JSON: {exc}.") from None
    if not isinstance(request, dict):
        raise HTTPProblem(400, "The inference request must be a JSON object.")
    return request


def _options(params: dict[str, Any]) -> tuple[bool | None, int | None]:
    tta = params.get("tta")
    if tta is not None and not isinstance(tta, bool):
        raise HTTPProblem(400, f"Parameter 'tta' must be true or false, not {tta!r}.")
    tile = params.get("tile_size")
    if tile is not None and (
        not isinstance(tile, int) or isinstance(tile, bool) or not 32 <= tile <= 8192
    ):
        raise HTTPProblem(400, f"Parameter 'tile_size' must be an integer 32-8192, not {tile!r}.")
    return tta, tile
