"""Fine-tuning from Label Studio's finished annotations (``serve --label-studio-train``): a
webhook starts a background job that exports the project from (a stand-in for) Label Studio,
turns brush and polygon annotations into our folder layout and trains from the served
checkpoint in another process; serving answers meanwhile; the new checkpoint is reported."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from PIL import Image

from tests.serve.live_server import LiveServer
from unet_resnet import Segmenter
from unet_resnet.checkpoint import read_meta
from unet_resnet.integrations.label_studio import LabelStudioSettings, decode_rle, encode_rle
from unet_resnet.serve import create_app

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image">
<Label value="disk"/><Label value="square"/><Label value="triangle"/></BrushLabels>
<PolygonLabels name="poly" toName="image"><Label value="square"/></PolygonLabels></View>"""
NAMES = ["disk", "square", "triangle"]


def _brush(mask: np.ndarray) -> list[dict]:
    height, width = mask.shape
    return [
        {
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "value": {"format": "rle", "rle": encode_rle(mask == i + 1), "brushlabels": [name]},
        }
        for i, name in enumerate(NAMES)
        if (mask == i + 1).any()
    ]


def _polygon(width: int, height: int) -> dict:
    # a square covering pixels 8..23 (x) and 4..19 (y), in percent of the image
    corners = [(8, 4), (24, 4), (24, 20), (8, 20)]
    points = [[x / width * 100, y / height * 100] for x, y in corners]
    return {
        "from_name": "poly",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": width,
        "original_height": height,
        "value": {"points": points, "polygonlabels": ["square"], "closed": True},
    }


@pytest.fixture
def label_studio(demo_data):
    """Project 7: three brush-annotated tasks, one polygon one, one cancelled, one to do."""
    pairs = sorted((demo_data / "train" / "images").glob("*.png"))[:5]
    images = {p.name: p.read_bytes() for p in pairs}
    masks = {p.name: np.asarray(Image.open(demo_data / "train" / "masks" / p.name)) for p in pairs}
    tasks = []
    for number, name in enumerate(images, start=1):
        mask = masks[name]
        if number <= 3:
            result = _brush(mask)
        elif number == 4:
            result = [_polygon(mask.shape[1], mask.shape[0])]
        else:
            result = _brush(mask)
        annotations = [{"id": number, "result": result, "was_cancelled": number == 5}]
        tasks.append(
            {"id": number, "data": {"image": f"/data/upload/7/{name}"}, "annotations": annotations}
        )
    tasks.append({"id": 99, "data": {"image": "/data/upload/7/none.png"}, "annotations": []})
    fake = FastAPI()

    @fake.get("/api/projects/7/export")
    async def export(request: Request) -> JSONResponse:
        assert request.headers["authorization"] == "Token k"
        return JSONResponse(tasks)

    @fake.get("/data/upload/7/{name}")
    async def upload(name: str) -> Response:
        return Response(images[name], media_type="image/png")

    with LiveServer(fake) as url:
        yield url, masks


@pytest.mark.slow  # a training run in a subprocess: make test-slow
def test_webhook_fine_tunes_in_the_background(label_studio, checkpoint, tmp_path):
    url, masks = label_studio
    settings = LabelStudioSettings(
        url=url,
        api_key="k",
        finetune_checkpoint=str(checkpoint),
        finetune_dir=str(tmp_path / "runs"),
        finetune_args=(
            "--epochs", "1", "--image-size", "32", "--batch-size", "2", "--workers", "0",
            "--encoder-weights", "none", "--log-images-every", "0", "--progress", "false",
        ),
    )  # fmt: skip
    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    app = create_app(segmenter, label_studio_settings=settings)
    with TestClient(app) as client:
        assert client.get("/label-studio/train").json() == {"enabled": True, "jobs": []}
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": CONFIG}}
        r = client.post("/label-studio/webhook", json=event)
        assert r.status_code == 201
        assert r.json()["result"]["training"]["state"] in ("queued", "exporting")
        # a second event while the job runs is coalesced into one more run after it
        assert client.post("/label-studio/webhook", json=event).status_code == 201
        # serving goes on while the job runs
        task = {"id": 1, "data": {"image": f"{url}/data/upload/7/{next(iter(masks))}"}}
        body = {"tasks": [task], "label_config": CONFIG}
        assert client.post("/label-studio/predict", json=body).status_code == 200
        app.state.label_studio_tuner.wait(timeout=600)
        jobs = client.get("/label-studio/train").json()["jobs"]
    assert [j["state"] for j in jobs] == ["done", "done"], jobs
    job = jobs[0]
    # the cancelled and the undone left out; one image or none in val: the first is used
    assert job["images"] == {"train": 4, "val": 1}
    assert read_meta(job["checkpoint"]).classes.names == segmenter.classes.names
    data = tmp_path / "runs" / "project-7"
    folder = next(p for p in sorted(data.iterdir()) if str(p) == job["folder"])
    names = list(masks)
    written = sorted((folder / "data" / "train" / "masks").glob("*.png"))
    assert [p.name for p in written] == ["task-1.png", "task-2.png", "task-3.png", "task-4.png"]
    for number in (1, 2, 3):
        got = np.asarray(Image.open(folder / "data" / "train" / "masks" / f"task-{number}.png"))
        np.testing.assert_array_equal(got, masks[names[number - 1]])
    polygon = np.asarray(Image.open(folder / "data" / "train" / "masks" / "task-4.png"))
    expected = np.zeros_like(polygon)
    expected[4:20, 8:24] = 2  # "square"
    np.testing.assert_array_equal(polygon, expected)


def test_rle_decoder_reads_our_encoder():
    rng = np.random.default_rng(1)
    for mask in (rng.random((31, 45)) > 0.7, np.ones((300, 260), bool), np.zeros((3, 3), bool)):
        flat = decode_rle(encode_rle(mask))
        plane = flat.reshape(*mask.shape, 4)
        np.testing.assert_array_equal(plane[..., 3], np.where(mask, 255, 0))
        assert (plane == plane[..., :1]).all()


def test_without_the_flag_webhooks_are_only_logged(checkpoint):
    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    with TestClient(create_app(segmenter)) as client:
        event = {"action": "START_TRAINING", "project": {"id": 7}}
        r = client.post("/label-studio/webhook", json=event)
        assert r.status_code == 201 and "training" not in r.json()["result"]
        assert client.get("/label-studio/train").json() == {"enabled": False, "jobs": []}
