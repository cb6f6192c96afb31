"""Run with Label Studio's own venv (not ours): drive a real Label Studio through its SDK.

Creates a BrushLabels project, connects our ML backend, uploads the images, asks Label Studio
to retrieve predictions for every task and writes what Label Studio stored, decoded by its own
converter: ``{file name: {label: mask as nested lists}}`` plus the backend's state.
Usage: python ls_live_flow.py LS_URL TOKEN BACKEND_URL OUT.json IMAGE...
"""

import json
import sys
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image">
<Label value="disk"/><Label value="square"/><Label value="triangle"/>
</BrushLabels></View>"""


def main(url: str, token: str, backend_url: str, out: str, *images: str) -> None:
    headers = {"Authorization": f"Token {token}"}
    ls = LabelStudio(base_url=url, api_key=token)
    project = ls.projects.create(title="unet-resnet test", label_config=CONFIG)
    backend = ls.ml.create(url=backend_url, project=project.id, title="unet-resnet")
    names = {}
    for image in map(Path, images):
        r = requests.post(
            f"{url}/api/projects/{project.id}/import",
            headers=headers,
            files={"file": (image.name, image.read_bytes(), "image/png")},
            timeout=60,
        )
        r.raise_for_status()
    for task in ls.tasks.list(project=project.id):
        names[task.id] = task.data["image"]
    r = requests.post(
        f"{url}/api/dm/actions?id=retrieve_tasks_predictions&project={project.id}",
        headers=headers,
        json={"selectedItems": {"all": True, "excluded": []}},
        timeout=300,
    )
    r.raise_for_status()
    stored = {}
    for task_id, name in names.items():
        masks = {}
        for prediction in ls.predictions.list(task=task_id):
            for result in prediction.result:
                shape = [result["original_height"], result["original_width"], 4]
                plane = np.reshape(decode_rle(result["value"]["rle"]), shape)[:, :, 3]
                masks[result["value"]["brushlabels"][0]] = (plane > 0).astype(int).tolist()
            masks["_score"] = prediction.score
            masks["_model_version"] = prediction.model_version
        stored[name] = masks
    state = ls.ml.get(backend.id).state
    Path(out).write_text(json.dumps({"backend_state": state, "tasks": stored}))


if __name__ == "__main__":
    main(*sys.argv[1:])
