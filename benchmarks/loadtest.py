"""Load test: concurrent requests at a running server on loopback, bounded in count and time.

``run_load(url, image, requests=..., concurrency=...)`` fires a fixed number of POSTs from a
pool of ``concurrency`` clients and reports throughput, p50/p95/p99 latency, successes, 503s
(the server shedding load, expected beyond its queue) and errors (anything else: expected 0).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["run_load"]


def run_load(
    url: str,
    image: bytes,
    *,
    requests: int = 40,
    concurrency: int = 4,
    timeout: float = 120.0,
) -> dict[str, Any]:
    import httpx

    if not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError("The load test only targets servers on this machine (loopback).")
    latencies: list[float] = []
    codes: list[int] = []

    def one(_: int) -> None:
        start = time.perf_counter()
        try:
            status = httpx.post(f"{url}/predict", content=image, timeout=timeout).status_code
        except httpx.HTTPError:
            status = -1
        codes.append(status)
        if status == 200:
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return (
            ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
            if ordered
            else float("nan")
        )

    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": seconds,
        "ok": codes.count(200),
        "shed_503": codes.count(503),
        "errors": sum(1 for c in codes if c not in (200, 503)),
        "throughput_per_s": codes.count(200) / seconds,
        "latency_p50_s": statistics.median(ordered) if ordered else float("nan"),
        "latency_p95_s": pct(0.95),
        "latency_p99_s": pct(0.99),
    }
