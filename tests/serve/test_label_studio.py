"""The Label Studio ML backend: the protocol's requests (as Label Studio sends them) answered
by the service, brush masks that Label Studio's own SDK decodes to exactly our mask, polygons,
and task images from Label Studio (with its token), data: URLs and a named root only."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import shapely
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from tests.serve.live_server import LiveServer
from tests.serve.ls_client import sdk_decode
from unet_resnet import Segmenter
from unet_resnet.integrations.label_studio import (
    LabelStudioError,
    LabelStudioSettings,
    encode_rle,
    match_classes,
    parse_config,
)
from unet_resnet.serve import create_app

BRUSH = """
<View>
  <Image name="img" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="img">
    <Label value="disk" background="red"/>
    <Label value="Square" background="blue"/>
    <Label value="triangle" background="green"/>
    <Label value="tree" background="brown"/>
  </BrushLabels>
</View>
"""
POLYGONS = BRUSH.replace("BrushLabels", "PolygonLabels")
WRONG = BRUSH.replace('"disk"', '"car"').replace('"Square"', '"bus"').replace('"triangle"', '"x"')


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _scene(seed: int, size: int = 64) -> np.ndarray:
    """A demo-like image: shapes on noise, so the trained checkpoint finds classes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((8, 8, 30, 30), fill=(220, 20, 60))
    draw.rectangle((36, 34, 58, 56), fill=(30, 144, 255))
    return np.asarray(canvas)


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls-root")
    (root / "sub").mkdir()
    arrays = {f"sub/scene{i}.png": _scene(i) for i in range(2)}
    for name, array in arrays.items():
        (root / name).write_bytes(_png(array))
    (root.parent / "secret.png").write_bytes(_png(_scene(9)))
    return root, arrays


@pytest.fixture(scope="module")
def client(segmenter, images):
    root, _ = images
    settings = LabelStudioSettings(root=root, model_version="v-test", max_tasks=4)
    app = create_app(segmenter, max_upload_mb=1, max_pixels=200_000, label_studio_settings=settings)
    with TestClient(app) as c:
        yield c


def _predict(client, tasks, config=BRUSH):
    """A predict call as Label Studio's ML API connector sends it."""
    body = {
        "tasks": tasks,
        "model_version": "v-test",
        "project": "42.1764633600",
        "label_config": config,
        "params": {"login": None, "password": None, "context": None},
    }
    return client.post("/label-studio/predict", json=body)


def test_health_setup_and_webhook(client):
    assert client.get("/label-studio").json()["status"] == "UP"
    assert client.get("/label-studio/health").json()["model_version"] == "v-test"
    setup = {
        "project": "42.1764633600",
        "schema": BRUSH,
        "hostname": "http://127.0.0.1:8080",
        "access_token": "t0ken",
        "model_version": "",
        "extra_params": "",
    }
    r = client.post("/label-studio/setup", json=setup)
    assert r.status_code == 200 and r.json() == {"model_version": "v-test"}
    r = client.post("/label-studio/setup", json=setup | {"schema": WRONG})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "'car'" in error and "'disk'" in error  # both sets named
    r = client.post("/label-studio/setup", json=setup | {"schema": "<View><Text/></View>"})
    assert r.status_code == 400 and "<Image" in r.json()["error"]
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 42, "label_config": BRUSH}}
    assert client.post("/label-studio/webhook", json=event).status_code == 201
    other = client.post("/label-studio/webhook", json={"action": "PROJECT_UPDATED"})
    assert other.status_code == 200 and other.json()["status"] == "Unknown event"


def test_brush_predictions_decode_to_our_mask_with_label_studios_sdk(
    client, segmenter, images, tmp_path
):
    _, arrays = images
    data_url = "data:image/png;base64," + base64.b64encode(_png(arrays["sub/scene1.png"])).decode()
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=sub/scene0.png"}},
        {"id": 2, "data": {"image": data_url}},
    ]
    r = _predict(client, tasks)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and "errors" not in r.json()
    cases, expected = [], []
    for prediction, name in zip(results, ["sub/scene0.png", "sub/scene1.png"], strict=True):
        labels = segmenter.predict(arrays[name])
        assert prediction["model_version"] == "v-test" and 0 < prediction["score"] <= 1
        # the task's score is the mask's quality estimate, as predict_report.json has it
        from unet_resnet.uncertainty import QualityMeter, entropy_map

        probs = segmenter.image_probabilities(arrays[name])
        meter = QualityMeter(len(segmenter.classes))
        meter.update(probs, labels, entropy_map(probs))
        assert prediction["score"] == pytest.approx(meter.summary()["quality"], abs=1e-4)
        found = {res["value"]["brushlabels"][0] for res in prediction["result"]}
        names = {segmenter.classes.names[i] for i in np.unique(labels) if i}
        assert found == {"Square" if n == "square" else n for n in names} and found
        for res in prediction["result"]:
            assert (res["from_name"], res["to_name"], res["type"]) == ("tag", "img", "brushlabels")
            value = res["value"]["brushlabels"][0]
            index = [n.casefold() for n in segmenter.classes.names].index(value.casefold())
            cases.append((res["value"]["rle"], res["original_height"], res["original_width"]))
            expected.append(np.where(labels == index, 255, 0))
    for got, want in zip(sdk_decode(cases, tmp_path), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_label_score_orders_tasks_by_the_share_of_pixels_expected_right(
    segmenter, images, checkpoint, monkeypatch
):
    """``--label-studio-score label``: a task's score is 1 - expected wrong pixels / pixels,
    so Label Studio's ascending sort by prediction score gives the labelling order."""
    from unet_resnet.cli import main
    from unet_resnet.uncertainty import QualityMeter, entropy_map

    root, arrays = images
    settings = LabelStudioSettings(root=root, model_version="v-test", score="label")
    app = create_app(segmenter, max_upload_mb=1, max_pixels=200_000, label_studio_settings=settings)
    names = ["sub/scene0.png", "sub/scene1.png"]
    tasks = [{"id": k, "data": {"image": f"/data/local-files/?d={n}"}} for k, n in enumerate(names)]
    with TestClient(app) as c:
        r = _predict(c, tasks)
    assert r.status_code == 200, r.text
    for prediction, name in zip(r.json()["results"], names, strict=True):
        probs = segmenter.image_probabilities(arrays[name])
        labels = segmenter.predict(arrays[name])
        meter = QualityMeter(len(segmenter.classes))
        meter.update(probs, labels, entropy_map(probs))
        summary = meter.summary()
        right = 1 - summary["expected_errors"] / labels.size
        assert prediction["score"] == pytest.approx(right, abs=1e-4)
        assert prediction["score"] != pytest.approx(summary["quality"], abs=1e-3)
    # the command passes the flag on to the backend's settings
    seen = {}

    def fake_app(segmenter, **kwargs):
        seen.update(kwargs)
        return object()

    monkeypatch.setattr("unet_resnet.serve.create_app", fake_app)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: None)
    argv = ["serve", "--checkpoint", str(checkpoint), "--label-studio-score", "label"]
    assert main(argv) == 0
    assert seen["label_studio_settings"].score == "label"
    with pytest.raises(LabelStudioError, match="check, label"):
        LabelStudioSettings(score="uncertain")


def test_rle_edge_cases_decode_exactly(tmp_path):
    rng = np.random.default_rng(0)
    masks = [
        rng.random((37, 53)) > 0.5,  # many short runs
        np.zeros((5, 7), bool),
        np.ones((300, 300), bool),  # a run longer than the 16-bit field (split)
        np.pad(np.ones((120, 150), bool), ((40, 0), (0, 90))),  # long runs of both values
    ]
    decoded = sdk_decode([(encode_rle(m), *m.shape) for m in masks], tmp_path)
    for got, mask in zip(decoded, masks, strict=True):
        np.testing.assert_array_equal(got, np.where(mask, 255, 0))


def test_polygons_cover_the_predicted_regions(client, segmenter, images):
    _, arrays = images
    r = _predict(client, [{"id": 3, "data": {"image": "sub/scene0.png"}}], POLYGONS)
    prediction = r.json()["results"][0]
    labels = segmenter.predict(arrays["sub/scene0.png"])
    assert prediction["result"]
    height, width = labels.shape
    for name in {res["value"]["polygonlabels"][0] for res in prediction["result"]}:
        index = [n.casefold() for n in segmenter.classes.names].index(name.casefold())
        painted = np.zeros(labels.shape, bool)
        ys, xs = np.mgrid[:height, :width] + 0.5  # pixel centres
        for res in prediction["result"]:
            if res["value"]["polygonlabels"][0] != name:
                continue
            assert res["type"] == "polygonlabels" and res["value"]["closed"]
            points = [(x * width / 100, y * height / 100) for x, y in res["value"]["points"]]
            painted |= shapely.contains_xy(shapely.Polygon(points), xs, ys)
        region = labels == index
        iou = (region & painted).sum() / (region | painted).sum()
        assert iou > 0.8, (name, iou)


def test_bad_tasks_are_named_and_the_others_still_answered(client):
    tasks = [
        {"id": 10, "data": {"image": "../secret.png"}},
        {"id": 11, "data": {"picture": "sub/scene0.png"}},
        {"id": 12, "data": {"image": "sub/missing.png"}},
        {"id": 13, "data": {"image": "sub/scene0.png"}},
    ]
    r = _predict(client, tasks)
    assert r.status_code == 200
    body = r.json()
    assert [len(p["result"]) > 0 for p in body["results"]] == [False, False, False, True]
    errors = {e["task"]: e["error"] for e in body["errors"]}
    assert "outside the allowed root" in errors[10]
    assert "'image'" in errors[11]
    assert "no file" in errors[12]
    assert _predict(client, tasks + tasks).status_code == 413  # over max_tasks
    r = _predict(client, tasks, WRONG)
    assert r.status_code == 400 and "share no name" in r.json()["error"]


def test_images_from_label_studio_carry_its_token(segmenter, images, monkeypatch):
    """A task's ``/data/upload/...`` path is fetched from Label Studio (LABEL_STUDIO_URL) with
    ``Authorization: Token LABEL_STUDIO_API_KEY``; without the key Label Studio refuses."""
    _, arrays = images
    fake = FastAPI()
    seen = []

    @fake.get("/data/upload/42/{name}")
    async def upload(name: str, request: Request) -> Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Token secret-key":
            return Response(status_code=401)
        return Response(_png(arrays["sub/scene0.png"]), media_type="image/png")

    with LiveServer(fake) as ls_url:
        monkeypatch.setenv("LABEL_STUDIO_URL", ls_url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-key")
        app = create_app(segmenter, label_studio_settings=LabelStudioSettings.from_env())
        task = {"id": 5, "data": {"image": "/data/upload/42/a.png"}}
        with TestClient(app) as c:
            r = _predict(c, [task, {"id": 6, "data": {"image": f"{ls_url}/data/upload/42/b"}}])
        assert [bool(p["result"]) for p in r.json()["results"]] == [True, True]
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong")
        app = create_app(segmenter, label_studio_settings=LabelStudioSettings.from_env())
        with TestClient(app) as c:
            r = _predict(c, [task])
        assert "401" in r.json()["errors"][0]["error"]
    assert seen == ["Token secret-key", "Token secret-key", "Token wrong"]


def test_config_parsing_rules():
    config = parse_config(POLYGONS)
    assert (config.image_name, config.image_key) == ("img", "image")
    assert config.controls[0].kind == "polygonlabels"
    mapping = match_classes(config, ["background", "disk", "square", "triangle"])
    assert mapping == {1: "disk", 2: "Square", 3: "triangle"}
    with pytest.raises(LabelStudioError, match="not valid XML"):
        parse_config("<View>")
    with pytest.raises(LabelStudioError, match="no <BrushLabels> or <PolygonLabels>"):
        parse_config('<View><Image name="i" value="$i"/><Choices name="c" toName="i"/></View>')
    assert json.dumps(encode_rle(np.eye(3, dtype=bool)))  # plain ints, JSON-ready
