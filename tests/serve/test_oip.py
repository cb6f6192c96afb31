"""The Open Inference Protocol (v2) in ``serve``: Triton's own HTTP client against a real
server on 127.0.0.1 (binary and JSON tensors), and bad requests answered like our routes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serve.live_server import LiveServer
from unet_resnet import Segmenter
from unet_resnet.serve import create_app

httpclient = pytest.importorskip("tritonclient.http")

NAME = "shapes"


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)


@pytest.fixture(scope="module")
def server(segmenter):
    app = create_app(segmenter, max_upload_mb=1, max_pixels=200_000, model_name=NAME)
    with LiveServer(app) as url:
        yield url.removeprefix("http://")


def _image(seed=0, shape=(40, 56, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_triton_client_health_and_metadata(server, segmenter):
    client = httpclient.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "1")
    assert not client.is_model_ready("other")
    meta = client.get_model_metadata(NAME)
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "probabilities"]
    assert meta["parameters"]["classes"] == list(segmenter.classes.names)
    assert "binary_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_client_labels_equal_segmenter(server, segmenter, binary):
    client = httpclient.InferenceServerClient(server)
    image = _image(1)
    tensor = httpclient.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("labels", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer(NAME, [tensor], outputs=outputs, request_id="r1")
    labels = result.as_numpy("labels")
    assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
    np.testing.assert_array_equal(labels, segmenter.predict(image))
    probs = result.as_numpy("probabilities")
    assert probs.shape == (4, *image.shape[:2]) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, segmenter.predict_proba(image), atol=1e-6)
    assert result.get_response()["id"] == "r1"
    # the mask's quality estimate rides along as a response parameter
    from unet_resnet.inference.formats.base import image_quality

    quality = result.get_response()["parameters"]["quality"]
    assert quality == pytest.approx(image_quality(segmenter, image)[2]["quality"], abs=1e-6)


def test_triton_client_batch_and_parameters(server, segmenter):
    client = httpclient.InferenceServerClient(server)
    batch = np.stack([_image(2), _image(3)])
    tensor = httpclient.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    result = client.infer(NAME, [tensor], parameters={"tta": True, "tile_size": 32})
    labels = result.as_numpy("labels")
    assert labels.shape == (2, 40, 56)
    for image, got in zip(batch, labels, strict=True):
        np.testing.assert_array_equal(got, segmenter.predict(image, tta=True, tile_size=32))
    quality = result.get_response()["parameters"]["quality"]
    assert len(quality) == 2 and all(0 <= q <= 1 for q in quality)  # one per image


@pytest.fixture(scope="module")
def client(segmenter):
    with TestClient(create_app(segmenter, max_upload_mb=1, max_pixels=200_000)) as c:
        yield c


def _request(image, **extra):
    return {
        "inputs": [
            {
                "name": "image",
                "shape": list(image.shape),
                "datatype": "UINT8",
                "data": image.reshape(-1).tolist(),
            }
        ],
        **extra,
    }


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (lambda r: r["inputs"][0].update(datatype="FP32"), 400, "must be UINT8"),
        (lambda r: r["inputs"][0].update(name="x"), 400, "called 'image'"),
        (lambda r: r["inputs"][0].update(shape=[40, 57, 3]), 400, "needs 6840"),
        (lambda r: r["inputs"][0].update(shape=[0, 5, 3]), 400, "positive sizes"),
        (lambda r: r["inputs"][0].update(data=[300] * 40 * 56 * 3), 400, "from 0 to 255"),
        (lambda r: r["inputs"].append(r["inputs"][0]), 400, "exactly one input"),
        (lambda r: r.update(outputs=[{"name": "boxes"}]), 400, "Unknown output 'boxes'"),
        (lambda r: r.update(parameters={"tile_size": 7}), 400, "tile_size"),
        (lambda r: r["inputs"][0].update(shape=[1000, 1000, 3]), 413, "over the limit"),
        (lambda r: r["inputs"][0].update(shape=[40, 84, 2]), 422, "channel"),
    ],
)
def test_bad_requests_are_clear_4xx(client, change, status, words):
    body = _request(_image(4, (40, 56, 3)))
    change(body)
    r = client.post("/v2/models/unet-resnet/infer", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_unknown_model_version_and_framing(client):
    image = _image(5, (8, 8, 3))
    assert client.post("/v2/models/nope/infer", json=_request(image)).status_code == 404
    r = client.get("/v2/models/unet-resnet/versions/9")
    assert r.status_code == 404 and "version" in r.json()["error"]
    r = client.post("/v2/models/unet-resnet/infer", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    header = json.dumps(_request(image)).encode()
    r = client.post(
        "/v2/models/unet-resnet/infer",
        content=header,
        headers={"Inference-Header-Content-Length": str(len(header) + 10)},
    )
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    big = b"x" * (2 * 2**20)
    assert client.post("/v2/models/unet-resnet/infer", content=big).status_code == 413
