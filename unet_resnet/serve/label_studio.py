"""Label Studio's ML-backend protocol on the service, under ``/label-studio``: the URL a user
pastes into a project's Model settings is ``http://HOST:PORT/label-studio``.

``GET /health`` (and ``/``), ``POST /setup`` (checks the labeling config against the
checkpoint's classes), ``POST /predict`` (pre-annotations for a batch of tasks), ``POST
/webhook`` (logged), ``GET /metrics``, ``GET /versions``. Predictions go through the
service's pool and admission like every other route; one bad task gets an empty prediction
and its reason in the response's ``errors``, the others are still answered.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from unet_resnet.errors import UnetResnetError
from unet_resnet.integrations.label_studio import (
    ImageFetcher,
    LabelStudioError,
    LabelStudioSettings,
    match_classes,
    parse_config,
    task_prediction,
)
from unet_resnet.integrations.label_studio_train import FineTuner
from unet_resnet.serve.service import HTTPProblem, Service, error_responses

__all__ = ["PREFIX", "LabelStudioSettings", "add_routes"]

PREFIX = "/label-studio"
log = logging.getLogger("unet_resnet.label_studio")

#: Webhook events that mean new or changed annotations (Label Studio's names).
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")

_OBJECT = {"type": "object"}


def _body_doc(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "description": description,
                "content": {"application/json": {"schema": schema}},
            }
        }
    }


PREDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "tasks": {"type": "array", "items": _OBJECT},
        "label_config": {"type": "string"},
        "project": {"type": "string"},
        "params": _OBJECT,
    },
    "required": ["tasks"],
}
SETUP_SCHEMA = {
    "type": "object",
    "properties": {
        "project": {"type": "string"},
        "schema": {"type": "string"},
        "hostname": {"type": "string"},
        "access_token": {"type": "string"},
        "model_version": {"type": "string"},
    },
    "required": ["schema"],
}


def add_routes(app: FastAPI, service: Service, settings: LabelStudioSettings) -> None:
    """Add the ML-backend routes under :data:`PREFIX`."""
    segmenter = service.segmenter
    class_names = list(service.classes.names)
    fetcher = ImageFetcher(settings, service.limits.max_bytes, service.limits.max_pixels)
    tags = ["label studio"]
    tuner = None
    if settings.finetune_checkpoint is not None:
        tuner = FineTuner(
            settings.finetune_checkpoint,
            settings,
            class_names,
            settings.finetune_dir,
            train_args=settings.finetune_args,
            max_bytes=service.limits.max_bytes,
            max_pixels=service.limits.max_pixels,
        )
    app.state.label_studio_tuner = tuner

    async def read_json(request: Request) -> dict[str, Any]:
        body = await service.read_body(request)
        try:
            data = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPProblem(400, f"The request body is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise HTTPProblem(400, "The request body must be a JSON object.")
        return data

    def check(config_xml: Any):
        try:
            config = parse_config(config_xml)
            return config, match_classes(config, class_names)
        except LabelStudioError as exc:
            raise HTTPProblem(400, str(exc)) from None

    @app.get(PREFIX, tags=tags)
    @app.get(f"{PREFIX}/health", tags=tags)
    async def health() -> dict[str, Any]:
        return {
            "status": "UP",
            "model_class": "unet-resnet",
            "model_version": settings.model_version,
        }

    @app.get(f"{PREFIX}/metrics", tags=tags)
    async def metrics() -> dict[str, Any]:
        return {}

    @app.get(f"{PREFIX}/versions", tags=tags)
    async def versions() -> dict[str, Any]:
        return {"versions": [settings.model_version]}

    @app.post(
        f"{PREFIX}/setup",
        tags=tags,
        responses=error_responses(400, 408, 413),
        **_body_doc("the project's labeling config and connection", SETUP_SCHEMA),
    )
    async def setup(request: Request) -> dict[str, Any]:
        data = await read_json(request)
        config, mapping = check(data.get("schema"))
        for key in ("hostname", "access_token"):  # Label Studio says how to reach it
            if isinstance(data.get(key), str) and data[key]:
                settings.learned[key] = data[key]
        log.info(
            "Label Studio project %s: image %r, labels %s from classes %s",
            data.get("project"),
            config.image_name,
            sorted(mapping.values()),
            sorted(mapping),
        )
        return {"model_version": settings.model_version}

    def predict_tasks(tasks: list[Any], config, mapping) -> dict[str, Any]:
        results, errors = [], []
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            try:
                data = task.get("data") if isinstance(task, dict) else None
                if not isinstance(data, dict) or config.image_key not in data:
                    raise LabelStudioError(
                        f"Task {task_id} has no data field {config.image_key!r} (the config's "
                        f'<Image value="${config.image_key}">).'
                    )
                image = service.decode(fetcher.fetch(data[config.image_key], task_id))
                probs = segmenter.image_probabilities(image)
                labels = segmenter.decide(probs)
                results.append(
                    task_prediction(
                        labels,
                        probs.cpu().numpy(),
                        config,
                        mapping,
                        settings.model_version,
                        score=settings.score,
                    )
                )
            except UnetResnetError as exc:
                log.warning("Label Studio task %s: %s", task_id, exc)
                errors.append({"task": task_id, "error": str(exc)})
                results.append(
                    {"result": [], "score": 0.0, "model_version": settings.model_version}
                )
        return {"results": results, **({"errors": errors} if errors else {})}

    @app.post(
        f"{PREFIX}/predict",
        tags=tags,
        responses=error_responses(400, 408, 413, 503),
        **_body_doc("tasks to pre-annotate, with the project's labeling config", PREDICT_SCHEMA),
    )
    async def predict(request: Request) -> dict[str, Any]:
        data = await read_json(request)
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise HTTPProblem(400, "'tasks' must be a list of Label Studio tasks.")
        if len(tasks) > settings.max_tasks:
            raise HTTPProblem(
                413, f"{len(tasks)} tasks in one call; send at most {settings.max_tasks}."
            )
        config, mapping = check(data.get("label_config"))
        return await service.run(predict_tasks, tasks, config, mapping)

    @app.post(
        f"{PREFIX}/webhook",
        tags=tags,
        responses=error_responses(400, 408, 413),
        **_body_doc("a Label Studio webhook event", _OBJECT),
    )
    async def webhook(request: Request) -> JSONResponse:
        data = await read_json(request)
        action = data.get("action")
        project = data.get("project")
        project_id = project.get("id") if isinstance(project, dict) else project
        if action not in TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event"}, status_code=200)
        log.info("Label Studio webhook %s for project %s", action, project_id)
        result: dict[str, Any] = {"logged": action}
        if tuner is not None and project_id is not None:
            config = project.get("label_config") if isinstance(project, dict) else None
            try:
                job = tuner.request(int(project_id), config)
            except (TypeError, ValueError):
                raise HTTPProblem(400, f"Project id {project_id!r} is not a number.") from None
            result["training"] = {"project": job.project, "state": job.state}
        return JSONResponse({"status": "ok", "result": result}, status_code=201)

    @app.get(f"{PREFIX}/train", tags=tags)
    async def training() -> dict[str, Any]:
        """Fine-tuning jobs started by webhooks (``serve --label-studio-train``)."""
        return {"enabled": tuner is not None, "jobs": [] if tuner is None else tuner.describe()}
