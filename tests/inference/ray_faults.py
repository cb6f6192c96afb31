"""Fault injection for the Ray engine's tests, installed in every Ray worker process by the
test's ``ray.init(runtime_env={"worker_process_setup_hook": ...})``: the worker that gets the
input named by :data:`KILL_ENV` exits its process once, as an out-of-memory kill would end
it (a marker file in the output folder remembers it did). Library code knows nothing of it."""

from __future__ import annotations

import os

#: The input file name a worker dies on (forwarded to the workers like our other settings).
KILL_ENV = "UNET_RESNET_TEST_KILL_WORKER_ON"


def install() -> None:
    from unet_resnet.inference import files

    predict_one = files.predict_one

    def dying_predict_one(segmenter, path, paths, **kwargs):
        target = os.environ.get(KILL_ENV)
        marker = paths.mask.parent / f".killed-{target}"
        if target and path.name == target and not marker.exists():
            marker.touch()
            os._exit(1)
        return predict_one(segmenter, path, paths, **kwargs)

    files.predict_one = dying_predict_one
