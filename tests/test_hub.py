"""Sharing: save_pretrained/from_pretrained, the generated model card, `export --format hf`,
`--checkpoint DIR`, the offline Hub errors and the push error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from unet_resnet import Segmenter
from unet_resnet.checkpoint import load_checkpoint
from unet_resnet.cli import main
from unet_resnet.errors import OutputExistsError, WeightsFileError, WeightsUnavailableError
from unet_resnet.hub import HubPushError, export_hf, push_folder
from unet_resnet.models import UNetWithResnet50Encoder


@pytest.mark.parametrize("encoder", ["resnet50", "resnet18"])
def test_save_and_load_pretrained_give_identical_logits(tmp_path, encoder):
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder=encoder, encoder_weights=None).eval()
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "config.json",
        "model.safetensors",
        "README.md",
    }
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["encoder"] == encoder and config["n_classes"] == 3
    flat = json.dumps(config)
    assert "tensor" not in flat.lower() and len(flat) < 4000  # architecture, no weights
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))  # safetensors alone
    assert set(weights) == set(model.state_dict())
    loaded = UNetWithResnet50Encoder.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_export_hf_from_a_run_renders_its_real_metrics(checkpoint, tmp_path, capsys):
    run = checkpoint.parent.parent
    scores = {
        "miou": 0.731,
        "mean_dice": 0.802,
        "pixel_accuracy": 0.95,
        "per_class": {
            "background": {"iou": 0.97, "dice": 0.98},
            "disk": {"iou": 0.71, "dice": 0.83},
            "square": {"iou": 0.66, "dice": 0.79},
            "triangle": {"iou": 0.58, "dice": 0.6},
        },
    }
    scores_path = tmp_path / "scores.json"
    scores_path.write_text(json.dumps(scores))
    out = tmp_path / "shared"
    argv = ["export", "--format", "hf", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*argv, "--scores", str(scores_path)]) == 0, capsys.readouterr().err

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "unet-resnet"
    assert card.data.pipeline_tag == "image-segmentation"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"mean_iou": scores["miou"], "dice": scores["mean_dice"]}
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in card.text.splitlines()
        if line.startswith("| ") and line.count("|") == 4
    }
    for name, row in scores["per_class"].items():
        assert rows[name] == f"{100 * row['iou']:.1f}"
    summary = json.loads((run / "summary.json").read_text())
    assert f"{summary['train_images']} training" in card.text
    assert "unet-resnet predict" in card.text and "from_pretrained" in card.text
    assert "#" in card.text and "disk" in card.text

    # The folder predicts like the checkpoint, through the CLI's --checkpoint DIR too.
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    expected = Segmenter.from_checkpoint(checkpoint, precision="fp32").predict_proba(image)
    shared = Segmenter.from_pretrained(out, precision="fp32")
    assert shared.classes.names == ["background", "disk", "square", "triangle"]
    np.testing.assert_allclose(shared.predict_proba(image), expected, atol=1e-5)

    # Without --scores the card falls back to the best validation scores in the checkpoint.
    assert main([*argv[:-1], str(tmp_path / "second")]) == 0
    card = ModelCard.load(tmp_path / "second" / "README.md")
    _, meta = load_checkpoint(checkpoint)
    assert card.data.eval_results[0].metric_value == pytest.approx(
        meta.extra["val"]["miou"], abs=1e-6
    )
    assert card.data.eval_results[0].dataset_split == "validation"

    # An existing folder is kept unless --overwrite.
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_predict_cli_accepts_a_shared_folder(checkpoint, demo_data, tmp_path, capsys):
    export_hf(checkpoint, tmp_path / "shared")
    out = tmp_path / "pred"
    images = str(demo_data / "test" / "images")
    assert (
        main(["predict", images, "--checkpoint", str(tmp_path / "shared"), "--out", str(out)]) == 0
    )
    assert len(list(out.glob("*.png"))) == 2


def test_tampered_config_is_a_clear_error(checkpoint, tmp_path):
    out = export_hf(checkpoint, tmp_path / "shared").path
    config = json.loads((out / "config.json").read_text())
    config["classes"]["names"] = config["classes"]["names"][:3]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsFileError, match="n_classes is 4 but classes names 3"):
        Segmenter.from_pretrained(out)
    config["classes"]["names"].append("x")
    config["n_classes"] = 5
    config["classes"]["names"].append("y")
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsFileError, match="does not load"):
        UNetWithResnet50Encoder.from_pretrained(out)


def test_export_never_replaces_the_checkpoint_folder(checkpoint):
    with pytest.raises(OutputExistsError, match="holds the checkpoint"):
        export_hf(checkpoint, checkpoint.parent, overwrite=True)
    assert checkpoint.is_file()


def test_repo_id_offline_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(WeightsUnavailableError) as info:
        Segmenter.from_pretrained("someone/not-cached-model")
    message = str(info.value)
    assert "someone/not-cached-model" in message and "OFFLINE is set" in message
    assert "Cache folder" in message
    code = main(["predict", str(tmp_path), "--checkpoint", "someone/not-cached", "--out", "x"])
    assert code == 2 and "not-cached" in capsys.readouterr().err


def test_repo_id_loads_from_the_hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None).eval()
    model.save_pretrained(tmp_path / "m")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = cache / "models--me--seg" / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--me--seg" / "refs").mkdir()
    (cache / "models--me--seg" / "refs" / "main").write_text("1" * 40)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((tmp_path / "m" / name).read_bytes())
    loaded = UNetWithResnet50Encoder.from_pretrained("me/seg")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_push_offline_names_the_repo(tmp_path):
    with pytest.raises(HubPushError, match="me/model.*OFFLINE is set"):
        push_folder(tmp_path, "me/model")
