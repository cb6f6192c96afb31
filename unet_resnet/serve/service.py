"""What every route of the service shares: the loaded segmenter, the limits, bounded request
bodies, admission (at most ``workers + queue_size`` requests predicted or waiting) and the one
table that turns an error type into an HTTP status. The app's own routes, the Open Inference
Protocol (``oip.py``) and the Label Studio backend (``label_studio.py``) all predict through
:meth:`Service.run`, so they share one thread pool, one queue and the same limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import numpy as np
from fastapi import Request

from unet_resnet.errors import (
    ImageReadError,
    ImageTooLargeError,
    InputShapeError,
    NotAnImageError,
    UnetResnetError,
)
from unet_resnet.inference import Segmenter
from unet_resnet.io import decode_image_bytes

__all__ = ["HTTPProblem", "Limits", "Service", "error_responses", "status_for"]

T = TypeVar("T")

#: The one place an error type becomes an HTTP status (most specific type first).
STATUS_FOR_ERROR: tuple[tuple[type[UnetResnetError], int], ...] = (
    (ImageTooLargeError, 413),
    (NotAnImageError, 415),
    (ImageReadError, 400),
    (InputShapeError, 422),
    (UnetResnetError, 400),
)


def status_for(exc: UnetResnetError) -> int:
    """The HTTP status of a user-fixable error, by its type."""
    return next(status for kind, status in STATUS_FOR_ERROR if isinstance(exc, kind))


ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}


def error_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    """OpenAPI entries for the errors a route answers with: ``{"error": message}``."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in statuses
    }


class HTTPProblem(Exception):
    """An answer with an error status and ``{"error": message}`` (the app's handler)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Limits:
    """What one request may cost (README, "Limits and safety")."""

    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_decoded_mb: float | None = None  # default: 16 bytes per allowed pixel
    body_timeout_s: float = 30.0
    workers: int = 1
    queue_size: int = 8

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_decoded_bytes(self) -> int:
        if self.max_decoded_mb is not None:
            return int(self.max_decoded_mb * 2**20)
        return 16 * self.max_pixels

    @property
    def capacity(self) -> int:
        return self.workers + self.queue_size

    def describe(self) -> dict[str, Any]:
        return {
            "max_upload_mb": self.max_upload_mb,
            "max_pixels": self.max_pixels,
            "max_decoded_mb": self.max_decoded_bytes / 2**20,
            "body_timeout_s": self.body_timeout_s,
            "workers": self.workers,
            "queue_size": self.queue_size,
        }


class Service:
    """The segmenter behind the routes, with its limits, pool and admission count."""

    def __init__(self, segmenter: Segmenter, limits: Limits):
        self.segmenter, self.limits = segmenter, limits
        self.classes = segmenter.classes
        self.in_flight = 0
        self._pool: ThreadPoolExecutor | None = None

    # -- the pool ------------------------------------------------------------------------------
    def executor(self) -> ThreadPoolExecutor:
        # One pool per app lifetime: a server (or test client) that starts the app again after
        # a shutdown gets a fresh pool instead of one that refuses work.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.limits.workers, thread_name_prefix="predict"
            )
        return self._pool

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the pool, admitted only while fewer than ``workers + queue_size``
        requests are predicted or waiting (503 with ``Retry-After`` otherwise); a user-fixable
        error becomes its HTTP status."""
        if self.in_flight >= self.limits.capacity:
            raise HTTPProblem(503, "The server is busy; retry shortly.", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self.executor(), fn, *args)
            except UnetResnetError as exc:
                raise HTTPProblem(status_for(exc), str(exc)) from None
        finally:
            self.in_flight -= 1

    # -- request bodies ------------------------------------------------------------------------
    @property
    def max_body(self) -> int:
        return self.limits.max_bytes + 64 * 1024  # multipart framing or a JSON envelope

    async def _read_body(self, request: Request) -> bytes:
        limit_mb = self.limits.max_upload_mb
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            raise HTTPProblem(413, f"Upload of {int(length)} bytes is over {limit_mb} MB.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise HTTPProblem(413, f"Upload is over {limit_mb} MB (stopped reading).")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_body(self, request: Request) -> bytes:
        """The request body, counted while it streams: cut off at the limit whatever the
        transfer encoding (Content-Length, chunked), and within ``body_timeout_s``."""
        timeout = self.limits.body_timeout_s
        try:
            return await asyncio.wait_for(self._read_body(request), timeout=timeout)
        except TimeoutError:
            raise HTTPProblem(
                408, f"The upload did not arrive within {timeout:g} s; send it faster."
            ) from None

    def decode(self, data: bytes) -> np.ndarray:
        """Image bytes -> ``H x W x C`` within the pixel and decoded-size limits."""
        return decode_image_bytes(
            data,
            max_pixels=self.limits.max_pixels,
            max_bytes=self.limits.max_decoded_bytes,
        )

    def check_pixels(self, height: int, width: int, what: str) -> None:
        if height * width > self.limits.max_pixels:
            raise HTTPProblem(
                413,
                f"{what} of {height} x {width} pixels is over the limit of "
                f"{self.limits.max_pixels} pixels.",
            )
