"""Property-based fuzzing of the HTTP API from its OpenAPI schema (schemathesis): whatever
query values, paths and bodies a client sends, the service answers without a server error,
with a documented status code, content type and response schema. (Only "every schema-valid
request is accepted" is left out: a well-formed upload can still hold an image the model
cannot take, such as a grey image for an RGB model, which is a documented 422.)
A short run here; ``make test-slow`` runs a longer one."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from unet_resnet import Segmenter  # noqa: E402
from unet_resnet.models import UNetWithResnet50Encoder  # noqa: E402
from unet_resnet.serve import create_app  # noqa: E402


def _app():
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None)
    segmenter = Segmenter(model, precision="fp32", pack_weights=False, tile_size=64)
    return create_app(segmenter, max_upload_mb=1, max_pixels=200_000, workers=1, queue_size=2)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@schema.parametrize()
@settings(max_examples=15, **_SETTINGS)
def test_no_server_error_on_any_request(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=400, **_SETTINGS)
def test_no_server_error_on_any_request_long(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
