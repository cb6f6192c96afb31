"""Label Studio's ML-backend protocol, without the HTTP part (that is ``serve/label_studio.py``).

- :func:`parse_config`: which ``<Image>`` the project labels and with which
  ``<BrushLabels>`` / ``<PolygonLabels>`` controls and label values;
  :func:`match_classes` pairs them with the checkpoint's classes by name (one clear error
  naming both sets when none match).
- :func:`encode_rle`: a mask in Label Studio's brush RLE (the format its brush tool and
  ``label_studio_sdk.converter.brush.decode_rle`` read: RGBA bytes, run-length coded with
  8-bit words and run sizes of 3, 4, 8 and 16 bits), vectorised.
- :func:`task_prediction`: one task's pre-annotation (brush masks and/or polygons, a score).
- :class:`ImageFetcher`: a task's image from Label Studio itself (uploads, local-files
  storage, cloud storage through its presign endpoint; token from ``LABEL_STUDIO_API_KEY``
  or from the project's setup call), from http(s) URLs, from ``data:`` URLs, or from files
  under a root you name (never outside it), within the service's byte limit.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet_resnet.errors import ImageReadError, UnetResnetError
from unet_resnet.integrations.shapes import region_polygons
from unet_resnet.uncertainty import QualityMeter, entropy_map

__all__ = [
    "CONTROL_TYPES",
    "TASK_SCORES",
    "ImageFetcher",
    "LabelConfig",
    "LabelStudioError",
    "LabelStudioSettings",
    "encode_rle",
    "match_classes",
    "parse_config",
    "task_prediction",
]

#: Label Studio control tags we can pre-annotate -> the result ``type`` (and value key).
CONTROL_TYPES = {"brushlabels": "brushlabels", "polygonlabels": "polygonlabels"}


class LabelStudioError(UnetResnetError, ValueError):
    """A labeling config, task or image source we cannot serve (answered with 400)."""


@dataclass(frozen=True)
class Control:
    name: str  # from_name
    to_name: str
    kind: str  # brushlabels | polygonlabels
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    image_name: str  # to_name
    image_key: str  # the task data key ($image -> image)
    controls: tuple[Control, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for c in self.controls for v in c.labels))


def parse_config(xml: str) -> LabelConfig:
    """The image and the brush/polygon controls of a labeling config (its XML)."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelStudioError(
            "The project has no labeling config (empty 'schema'/'label_config')."
        )
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelStudioError(f"The labeling config is not valid XML: {exc}.") from None
    images = {
        el.get("name"): el.get("value", "")
        for el in root.iter()
        if el.tag.lower() == "image" and el.get("name")
    }
    if not images:
        raise LabelStudioError(
            'The labeling config names no <Image name="..." value="$..."/>: this backend '
            "segments images."
        )
    controls = []
    for el in root.iter():
        kind = CONTROL_TYPES.get(el.tag.lower())
        if kind is None or el.get("toName") not in images:
            continue
        values = tuple(
            label.get("value")
            for label in el
            if label.tag.lower() == "label" and label.get("value")
        )
        controls.append(Control(el.get("name", kind), el.get("toName"), kind, values))
    if not controls:
        raise LabelStudioError(
            "The labeling config has no <BrushLabels> or <PolygonLabels> on its image; add one "
            "whose <Label value> names are the model's classes."
        )
    image_name = controls[0].to_name
    value = images[image_name]
    if not value.startswith("$") or len(value) < 2:
        raise LabelStudioError(
            f'<Image name="{image_name}"> needs value="$key" naming the task field with the image.'
        )
    controls = [c for c in controls if c.to_name == image_name]
    return LabelConfig(image_name, value[1:], tuple(controls))


def match_classes(config: LabelConfig, class_names: list[str] | tuple[str, ...]) -> dict[int, str]:
    """Class index -> label value for the classes the project labels (by name, then
    case-insensitively). Background (index 0) is never pre-annotated."""
    exact = {v: v for v in config.labels}
    folded = {v.casefold(): v for v in config.labels}
    mapping = {}
    for index, name in enumerate(class_names):
        if index == 0:
            continue
        value = exact.get(name) or folded.get(name.casefold())
        if value is not None:
            mapping[index] = value
    if not mapping:
        raise LabelStudioError(
            f"The labeling config's labels {sorted(config.labels)} share no name with the "
            f"checkpoint's classes {list(class_names[1:])} (background left out). Rename the "
            "<Label value> entries to the class names."
        )
    return mapping


# -- brush RLE -------------------------------------------------------------------------------
_RUN_BITS = (3, 4, 8, 16)  # Label Studio's run-length field sizes, by a 2-bit index
_MAX_RUN = 1 << _RUN_BITS[-1]


def encode_rle(mask: np.ndarray) -> list[int]:
    """A boolean ``H x W`` mask in Label Studio's brush RLE (RGBA, 255 where the mask is)."""
    values = np.where(np.asarray(mask, dtype=bool).reshape(-1), 255, 0).astype(np.int64)
    if values.size == 0:
        raise LabelStudioError("Cannot encode an empty mask.")
    starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [values.size]])) * 4  # 4 channels per pixel
    # runs longer than the largest field are split in pieces of _MAX_RUN
    pieces = -(-lengths // _MAX_RUN)
    piece_values = np.repeat(values[starts], pieces)
    piece_lengths = np.full(piece_values.size, _MAX_RUN, dtype=np.int64)
    piece_lengths[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * _MAX_RUN
    index = np.searchsorted(1 << np.asarray(_RUN_BITS), piece_lengths)  # smallest field
    widths = np.asarray(_RUN_BITS)[index]
    # each piece: 1 (a run), its 2-bit size index, length - 1, the 8-bit value
    field_values = np.stack(
        [np.ones_like(index), index, piece_lengths - 1, piece_values], axis=1
    ).reshape(-1)
    field_widths = np.stack(
        [np.ones_like(index), np.full_like(index, 2), widths, np.full_like(index, 8)], axis=1
    ).reshape(-1)
    header_values = np.asarray([values.size * 4, 8 - 1, *(b - 1 for b in _RUN_BITS)])
    header_widths = np.asarray([32, 5, 4, 4, 4, 4])
    field_values = np.concatenate([header_values, field_values])
    field_widths = np.concatenate([header_widths, field_widths])
    ends = np.cumsum(field_widths)
    position = np.arange(ends[-1]) - np.repeat(ends - field_widths, field_widths)
    shift = np.repeat(field_widths, field_widths) - 1 - position
    bits = (np.repeat(field_values, field_widths) >> shift) & 1
    return np.packbits(bits.astype(np.uint8)).tolist()


# -- predictions -----------------------------------------------------------------------------
def _quality(summary: dict[str, Any], pixels: int) -> float:
    """The mask's quality estimate (expected mIoU)."""
    return summary["quality"]


def _right_share(summary: dict[str, Any], pixels: int) -> float:
    """The share of the mask's pixels expected right: 1 - expected wrong pixels / pixels."""
    return 1.0 - summary["expected_errors"] / pixels if pixels else 1.0


#: ``serve --label-studio-score`` -> (a task's score from the quality summary and its pixel
#: count, what sorting the tasks by prediction score, ascending, then puts first): Label
#: Studio sorts by one number, so the review queue's two orders are two scores
TASK_SCORES: dict[str, tuple[Any, str]] = {
    "check": (_quality, "the mask's expected mIoU: the masks to check first"),
    "label": (
        _right_share,
        "the share of pixels expected right: the tasks to label first (for images of one "
        "size, predict --review-for label's order)",
    ),
}


def task_prediction(
    labels: np.ndarray,
    probs: np.ndarray,
    config: LabelConfig,
    mapping: dict[int, str],
    model_version: str,
    *,
    min_pixels: int = 4,
    score: str = "check",
) -> dict[str, Any]:
    """One task's prediction: for each class present, a brush mask (RLE) for each
    BrushLabels control and a polygon per region for each PolygonLabels control. The task's
    ``score`` is one of :data:`TASK_SCORES`: by default the mask's quality estimate (its
    expected mIoU, what ``predict``'s review queue sorts by: sorting Label Studio's tasks by
    prediction score puts the masks to check first on top); ``label``: the share of its
    pixels expected right (the tasks to label first on top). Each result's score is the
    expected IoU of its class."""
    import torch

    height, width = labels.shape
    tensor = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    meter = QualityMeter(tensor.shape[0])
    meter.update(tensor, labels, entropy_map(tensor))
    pixels = int((labels < tensor.shape[0]).sum())  # nodata (255) is no pixel of the mask
    task_score, ious = TASK_SCORES[score][0](meter.summary(), pixels), meter.expected_iou()
    results: list[dict[str, Any]] = []
    for index, value in mapping.items():
        region = labels == index
        if region.sum() < min_pixels:
            continue
        score = float(ious[index]) if np.isfinite(ious[index]) else 0.0
        for control in config.controls:
            if value not in control.labels:
                continue
            common = {
                "from_name": control.name,
                "to_name": config.image_name,
                "type": control.kind,
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "score": score,
            }
            if control.kind == "brushlabels":
                results.append(
                    common
                    | {
                        "value": {
                            "format": "rle",
                            "rle": encode_rle(region),
                            "brushlabels": [value],
                        }
                    }
                )
                continue
            for ring in region_polygons(region, min_pixels=min_pixels):
                points = np.column_stack([ring[:, 0] / width, ring[:, 1] / height]) * 100
                results.append(
                    common
                    | {
                        "value": {
                            "points": np.round(points, 4).tolist(),
                            "polygonlabels": [value],
                            "closed": True,
                        }
                    }
                )
    return {
        "result": results,
        "score": float(task_score),
        "model_version": model_version,
    }


# -- task images -----------------------------------------------------------------------------
@dataclass
class LabelStudioSettings:
    """Where task images come from. ``url``/``api_key`` default to ``LABEL_STUDIO_URL`` and
    ``LABEL_STUDIO_API_KEY`` (else what the project's setup call sends); ``root`` allows
    files under it (paths relative to it, or Label Studio's ``/data/local-files/?d=...``);
    ``max_tasks`` bounds one predict call; ``score``: what a task's prediction score is
    (:data:`TASK_SCORES`); ``finetune_*`` turn on fine-tuning from finished annotations."""

    url: str | None = None
    api_key: str | None = None
    root: str | os.PathLike | None = None
    model_version: str = "unet-resnet"
    timeout_s: float = 10.0
    max_tasks: int = 64
    score: str = "check"
    learned: dict[str, str] = field(default_factory=dict)  # from setup: hostname, access_token
    #: Fine-tuning on webhooks (``serve --label-studio-train``): the checkpoint to start from,
    #: where runs go, and extra ``train`` flags. Off while ``finetune_checkpoint`` is None.
    finetune_checkpoint: str | None = None
    finetune_dir: str = "label-studio-runs"
    finetune_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.score not in TASK_SCORES:
            choices = ", ".join(TASK_SCORES)
            raise LabelStudioError(f"Unknown task score {self.score!r}: expected one of {choices}.")

    @classmethod
    def from_env(cls, **kwargs: Any) -> LabelStudioSettings:
        return cls(
            url=os.environ.get("LABEL_STUDIO_URL") or None,
            api_key=os.environ.get("LABEL_STUDIO_API_KEY") or None,
            **kwargs,
        )

    @property
    def base_url(self) -> str | None:
        url = self.url or self.learned.get("hostname")
        return url.rstrip("/") if url else None

    @property
    def token(self) -> str | None:
        return self.api_key or self.learned.get("access_token")


LOCAL_FILES = "/data/local-files/"
CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")


class ImageFetcher:
    """Bytes of a task's image, at most ``max_bytes``."""

    def __init__(
        self, settings: LabelStudioSettings, max_bytes: int, max_pixels: int | None = None
    ):
        self.settings, self.max_bytes, self.max_pixels = settings, max_bytes, max_pixels

    def fetch(self, reference: Any, task_id: Any = None) -> bytes:
        if not isinstance(reference, str) or not reference:
            raise LabelStudioError(f"Task {task_id}: the image field is not a URL or path.")
        parsed = urllib.parse.urlparse(reference)
        if parsed.scheme == "data":
            return self._data_url(reference, task_id)
        if parsed.scheme in ("http", "https"):
            return self._download(reference, task_id, auth=self._same_origin(reference))
        if parsed.scheme in CLOUD_SCHEMES:
            return self._presigned(reference, task_id)
        if parsed.scheme:
            raise LabelStudioError(
                f"Task {task_id}: cannot read {parsed.scheme}:// URLs ({reference!r})."
            )
        if reference.startswith(LOCAL_FILES) and self.settings.root is not None:
            query = urllib.parse.parse_qs(parsed.query)
            return self._local(query.get("d", [""])[0], task_id)
        if reference.startswith("/data/"):  # Label Studio's uploads and storages
            return self.from_label_studio(reference, task_id)
        if self.settings.root is not None:
            return self._local(reference, task_id)
        raise LabelStudioError(
            f"Task {task_id}: {reference!r} is a file path; start the service with "
            "--label-studio-root DIR to allow files under DIR."
        )

    # -- sources -------------------------------------------------------------------------------
    def from_label_studio(self, path: str, task_id: Any = None) -> bytes:
        """``path`` (from ``/``) on Label Studio's server, with its token."""
        base = self.settings.base_url
        if not base:
            raise LabelStudioError(
                f"Task {task_id}: {path!r} is served by Label Studio; set LABEL_STUDIO_URL "
                "(and LABEL_STUDIO_API_KEY) for the service, or connect it from the project."
            )
        return self._download(base + path, task_id, auth=True)

    def _presigned(self, uri: str, task_id: Any) -> bytes:
        if task_id is None:
            raise LabelStudioError(f"{uri!r} needs the task id to be resolved by Label Studio.")
        encoded = base64.urlsafe_b64encode(uri.encode()).decode()
        return self.from_label_studio(
            f"/tasks/{int(task_id)}/presign/?fileuri={urllib.parse.quote(encoded)}", task_id
        )

    def _same_origin(self, url: str) -> bool:
        base = self.settings.base_url
        if not base:
            return False
        a, b = urllib.parse.urlparse(url), urllib.parse.urlparse(base)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def _download(self, url: str, task_id: Any, *, auth: bool) -> bytes:
        headers = {"User-Agent": "unet-resnet"}
        if auth and self.settings.token:
            headers["Authorization"] = f"Token {self.settings.token}"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                data = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise ImageReadError(
                f"Task {task_id}: {url} answered {exc.code} {exc.reason}."
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ImageReadError(f"Task {task_id}: could not download {url}: {reason}.") from None
        return self._bounded(data, url, task_id)

    def _data_url(self, url: str, task_id: Any) -> bytes:
        head, _, payload = url.partition(",")
        if not head.endswith(";base64"):
            raise LabelStudioError(f"Task {task_id}: only base64 data: URLs are read.")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise ImageReadError(f"Task {task_id}: the data: URL is over the upload limit.")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageReadError(f"Task {task_id}: the data: URL is not valid base64.") from None

    def _local(self, relative: str, task_id: Any) -> bytes:
        root = Path(self.settings.root).resolve()  # type: ignore[arg-type]
        given = Path(urllib.parse.unquote(relative))
        path = (given if given.is_absolute() else root / given).resolve()
        if not path.is_relative_to(root):
            raise LabelStudioError(
                f"Task {task_id}: {relative!r} is outside the allowed root {root}."
            )
        if not path.is_file():
            raise ImageReadError(f"Task {task_id}: no file {relative!r} under {root}.")
        if path.stat().st_size > self.max_bytes:
            raise ImageReadError(f"Task {task_id}: {relative!r} is over the upload limit.")
        return path.read_bytes()

    def _bounded(self, data: bytes, where: str, task_id: Any) -> bytes:
        if len(data) > self.max_bytes:
            raise ImageReadError(
                f"Task {task_id}: {where} is over the limit of {self.max_bytes} bytes."
            )
        return data


def decode_rle(rle: list[int] | bytes) -> np.ndarray:
    """Label Studio's brush RLE -> the flat array of values it encodes (RGBA bytes)."""
    bits = np.unpackbits(np.asarray(bytearray(rle), dtype=np.uint8))
    weights = {n: 1 << np.arange(n - 1, -1, -1) for n in (1, 2, 4, 5, 32)}
    position = 0

    def read(n: int) -> int:
        nonlocal position
        if position + n > bits.size:
            raise LabelStudioError("A brush RLE ends early (damaged annotation).")
        w = weights.get(n)
        if w is None:
            w = weights[n] = 1 << np.arange(n - 1, -1, -1)
        value = int(bits[position : position + n] @ w)
        position += n
        return value

    total = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if total > 4 * 2**31:
        raise LabelStudioError(f"A brush RLE claims {total} values; refusing.")
    out = np.zeros(total, dtype=np.uint8)
    i = 0
    while i < total:
        run = read(1)
        end = min(total, i + 1 + read(sizes[read(2)]))
        if run:
            out[i:end] = read(word)
            i = end
        else:
            while i < end:
                out[i] = read(word)
                i += 1
    return out


def annotation_mask(
    results: list[dict[str, Any]], class_index: dict[str, int], height: int, width: int
) -> np.ndarray:
    """One annotation's brush and polygon results as a class-index mask (0 = background;
    later results paint over earlier ones, as Label Studio draws them)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for result in results:
        kind = str(result.get("type", "")).lower()
        value = result.get("value") or {}
        labels = value.get(kind) or []
        index = next((class_index[v] for v in labels if v in class_index), None)
        if index is None:
            continue
        if kind == "brushlabels" and value.get("format", "rle") == "rle" and value.get("rle"):
            flat = decode_rle(value["rle"])
            if flat.size != height * width * 4:
                raise LabelStudioError(
                    f"A brush mask of {flat.size // 4} pixels on a {width}x{height} image."
                )
            mask[flat.reshape(height, width, 4)[:, :, 3] > 0] = index
        elif kind == "polygonlabels" and value.get("points"):
            from rasterio import features
            from shapely.geometry import Polygon

            points = np.asarray(value["points"], dtype=float) / 100 * [width, height]
            if len(points) >= 3:
                inside = features.rasterize(
                    [(Polygon(points), 1)], out_shape=(height, width), dtype="uint8"
                )
                mask[inside > 0] = index
    return mask


def export_dataset(
    tasks: list[dict[str, Any]],
    config: LabelConfig,
    class_names: list[str],
    fetcher: ImageFetcher,
    out: Path,
    *,
    val_every: int = 5,
) -> dict[str, int]:
    """The finished annotations of a project (Label Studio's JSON export) as our folder
    layout under ``out``: ``{train,val}/{images,masks}`` and ``classes.json`` (the
    checkpoint's classes; labels matched as for predictions). Every ``val_every``-th image
    goes to val (the first one too when there would be none). Cancelled annotations and tasks
    without any are skipped. Returns the counts per split."""
    import json

    from PIL import Image

    from unet_resnet.io import decode_image_bytes

    mapping = match_classes(config, class_names)
    class_index = {value: index for index, value in mapping.items()}
    done = []
    for task in tasks:
        annotations = [
            a
            for a in task.get("annotations") or []
            if not a.get("was_cancelled") and a.get("result")
        ]
        if annotations and isinstance(task.get("data"), dict):
            done.append((task, annotations[-1]))
    if not done:
        raise LabelStudioError("The project has no finished annotations to train on yet.")
    counts = {"train": 0, "val": 0}
    for number, (task, annotation) in enumerate(done):
        split = "val" if number % val_every == val_every - 1 else "train"
        image = decode_image_bytes(
            fetcher.fetch(task["data"].get(config.image_key), task.get("id"))
        )
        height, width = image.shape[:2]
        mask = annotation_mask(annotation["result"], class_index, height, width)
        name = f"task-{task.get('id', number)}"
        for kind, array in (("images", image), ("masks", mask)):
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(
                array if array.ndim == 2 or array.shape[-1] != 1 else array[..., 0]
            ).save(folder / f"{name}.png")
        counts[split] += 1
    if counts["val"] == 0:  # one image: validate on it too
        for kind in ("images", "masks"):
            (out / "val" / kind).mkdir(parents=True, exist_ok=True)
            first = next((out / "train" / kind).iterdir())
            (out / "val" / kind / first.name).write_bytes(first.read_bytes())
        counts["val"] = 1
    (out / "classes.json").write_text(json.dumps({"names": list(class_names)}))
    return counts
