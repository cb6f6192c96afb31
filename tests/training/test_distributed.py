"""Multi-process training as multi-GPU training runs it, on CPUs (2 processes, gloo): a frozen
encoder, fresh augmentation each epoch, disjoint shards, exact validation counts, and a NaN
on one rank stopping every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unet_resnet.data import make_demo_dataset

ROOT = Path(__file__).resolve().parents[2]

# Lightning's DDP launcher starts the other rank by running this script again.
_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import lightning as L
    import torch
    from unet_resnet.training import TrainConfig, train

    data, out, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    class Record(L.Callback):
        '''Per rank and epoch: the (index, seed) pairs this rank draws and a checksum of its
        first batch as the model receives it (augmented).'''

        def __init__(self):
            self.epochs = []

        def on_train_epoch_start(self, trainer, module):
            sampler = trainer.train_dataloader.sampler
            self.epochs.append({"drawn": [list(map(int, item)) for item in sampler]})

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                self.epochs[-1]["first_batch_sum"] = float(batch[0].double().sum())
            if extra.get("nan_on_rank") == trainer.global_rank and batch_idx == 1:
                with torch.no_grad():
                    next(module.model.parameters()).fill_(float("nan"))

        def on_train_end(self, trainer, module):
            path = os.path.join(out, f"record_rank{trainer.global_rank}.json")
            with open(path, "w") as f:
                json.dump(self.epochs, f)

    config = TrainConfig(
        data=data, out=out, encoder="resnet18", encoder_weights=None, image_size=32,
        batch_size=2, workers=0, progress=False, accelerator="cpu", devices="2",
        strategy="ddp", precision="fp32", log_images_every=0, augment="strong",
        **extra.get("config", {}),
    )
    train(config, callbacks=[Record()])
    """
)


def _run(tmp_path: Path, data: Path, extra: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "run_ddp.py"
    script.write_text(_SCRIPT)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_"))
    }
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path / "run"), json.dumps(extra)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 3 validation images: a padded split would count one of them twice.
    return make_demo_dataset(tmp_path_factory.mktemp("data"), 8, 3, 32, seed=0)


def test_frozen_encoder_fresh_augmentation_and_disjoint_shards(data, tmp_path):
    """--freeze-encoder-epochs under DDP stopped at the first step ("Expected to have
    finished reduction"). Here it trains 2 epochs (frozen, then not) on 2 processes."""
    result = _run(tmp_path, data, {"config": {"epochs": 2, "freeze_encoder_epochs": 1}})
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "run"
    records = [json.loads((out / f"record_rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in (0, 1):
        shards = [{i for i, _ in rank[epoch]["drawn"]} for rank in records]
        assert shards[0].isdisjoint(shards[1]) and len(shards[0] | shards[1]) == 8
    for rank in records:
        seeds = [dict(map(tuple, rank[e]["drawn"])) for e in (0, 1)]
        common = set(seeds[0]) & set(seeds[1])
        assert all(seeds[0][i] != seeds[1][i] for i in common)  # new augmentation each epoch
        assert rank[0]["first_batch_sum"] != rank[1]["first_batch_sum"]
    consistency = [json.loads((out / f"ddp_rank{r}.json").read_text()) for r in (0, 1)]
    assert consistency[0]["weights_sha256"] == consistency[1]["weights_sha256"]
    # every validation pixel counted once, none twice (3 images over 2 ranks)
    assert consistency[0]["val_pixels"] == consistency[1]["val_pixels"] == 3 * 32 * 32
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,train_loss")


@pytest.mark.slow  # two processes: make test-slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_message(data, tmp_path):
    """The loss turned NaN on rank 1 only: both ranks stop together with the message, not
    rank 1 raising while rank 0 waits in a collective until the timeout."""
    result = _run(tmp_path, data, {"nan_on_rank": 1, "config": {"epochs": 1}})
    assert result.returncode != 0
    assert "became NaN or infinite" in result.stderr
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
