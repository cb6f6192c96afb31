"""Active learning, simulated: does labelling what the review queue ranks first beat random?

``python -m benchmarks.quality.active [--datasets nuclei brain textures] [--rounds 4]``. On
each real-image set of ``benchmarks/quality`` the training split is the pool of images a
person could label. Both arms start from the same few labelled images (chosen at random);
each round trains a model on the labelled images (``unet-resnet train`` defaults, a fixed
number of samples seen per round whatever the count, so rounds differ only in what was
labelled) and scores it on the validation split. Then:

- **review**: the model predicts every unlabelled image and the ``N`` it trusts least (the
  lowest quality estimate, the order of ``predict_report.json``'s ``review_order``) are
  labelled next;
- **errors**: the ``N`` with the most expected wrong pixels (the review queue's labelling
  order, ``predict --review-for label``: ``predict_report.json``'s ``label_order``);
- **diverse**: the same doubt (1 - the quality estimate) spread over what the labels do not
  cover yet: greedily the image whose distance (in the model's own deepest features) to
  everything labelled or picked, times its doubt, is largest (a weighted k-center rule);
- **typical**: the same doubt where the pool is dense rather than where it is sparse (doubt
  weighting TypiClust, Hacohen et al. 2022, a rule made for small labelling budgets): the
  model's features of labelled and unlabelled images in ``labelled + N`` k-means clusters;
  from each of the ``N`` largest clusters that hold no labelled image, the image whose doubt
  times typicality (one over its mean distance to its nearest neighbours) is largest;
- **errors-typical**: the same rule weighted by the expected wrong pixels instead;
- **random**: ``N`` unlabelled images chosen at random.

Learning curves (validation mIoU against labelled images) for the arms go to a PNG; the
headline is how many labelled images each other arm needs to reach the random arm's final
score (``saving``: 1 - that / the random arm's final count; "not reached" is said as such).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quality.harness import (
    common_arguments,
    over_datasets,
    train_defaults,
    write_results,
)

#: dataset -> (labelled at the start, added per round)
SCHEDULE = {"nuclei": (2, 2), "brain": (8, 8), "textures": (4, 4)}


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = sorted((root / split / "images").iterdir())
    masks = {p.stem: p for p in (root / split / "masks").iterdir()}
    return [(image, masks[image.stem]) for image in images]


#: a round's training split holds at least this many entries: few labelled images are
#: repeated (links under other names), as sampling with replacement would, so that a round
#: is a few epochs rather than hundreds of one-step ones (each with its own validation)
MIN_EPOCH = 32


def _subset(root: Path, chosen: list[tuple[Path, Path]], folder: Path) -> Path:
    """A dataset folder whose training split is ``chosen`` (links, each repeated
    ``ceil(MIN_EPOCH / len(chosen))`` times) and whose validation split and classes are
    ``root``'s."""
    if folder.exists():
        shutil.rmtree(folder)
    for kind in ("images", "masks"):
        (folder / "train" / kind).mkdir(parents=True)
    copies = math.ceil(MIN_EPOCH / len(chosen))
    for image, mask in chosen:
        for k in range(copies):
            name = f"r{k}_{image.stem}"
            os.symlink(image, folder / "train" / "images" / (name + image.suffix))
            os.symlink(mask, folder / "train" / "masks" / (name + mask.suffix))
    os.symlink(root / "val", folder / "val")
    for extra in root.glob("*.json"):
        shutil.copy(extra, folder / extra.name)
    return folder


def round_samples(samples: int, per_label: int, labelled: int) -> int:
    """Samples a round sees: ``samples``, or ``per_label`` per labelled image if more (a
    budget that grows with the labels, so that more labels never mean fewer passes over
    each)."""
    return max(samples, per_label * labelled)


def _train(data: Path, out: Path, name: str, labelled: int, samples: int, encoder: str, seed):

    entries = labelled * math.ceil(MIN_EPOCH / labelled)  # as _subset repeats them
    return train_defaults(
        name,
        data,
        out,
        epochs=max(1, round(samples / entries)),
        encoder=encoder,
        seed=seed,
        overwrite=True,
    )


def _score(checkpoint: Path, root: Path) -> float:
    from unet_resnet import Segmenter
    from unet_resnet.data import SegmentationFolder
    from unet_resnet.inference.evaluate import evaluate

    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32", backend="torch")
    return evaluate(segmenter, SegmentationFolder(root, "val"), progress=False)["miou"]


def _least_trusted(checkpoint: Path, pool: list[tuple[Path, Path]], count: int):
    """The ``count`` images of ``pool`` with the lowest quality estimate (predict's)."""
    from unet_resnet import Segmenter
    from unet_resnet.inference.formats.base import image_quality
    from unet_resnet.io import read_image

    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32", backend="torch")
    scores = [image_quality(segmenter, read_image(image))[2]["quality"] for image, _ in pool]
    order = np.argsort(scores, kind="stable")[:count]
    return [pool[i] for i in order]


def _doubts(segmenter, image) -> tuple[float, float]:
    """The review queue's doubt of an image (1 - its quality estimate) and its expected
    wrong pixels (what its labelling order, ``predict --review-for label``, sorts by)."""
    from unet_resnet.inference.formats.base import image_quality

    summary = image_quality(segmenter, image)[2]
    return 1.0 - summary["quality"], summary["expected_errors"]


def _most_errors(checkpoint: Path, pool: list[tuple[Path, Path]], count: int):
    """The ``count`` images of ``pool`` with the most expected wrong pixels: the first of
    the review queue's labelling order (``predict --review-for label``). Unlike the quality
    estimate (a mean, lowest on the images with the least foreground), it grows with how
    much an image has to teach."""
    from unet_resnet import Segmenter
    from unet_resnet.io import read_image

    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32", backend="torch")
    errors = [_doubts(segmenter, read_image(image))[1] for image, _ in pool]
    order = np.argsort(-np.asarray(errors), kind="stable")[:count]
    return [pool[i] for i in order]


def _features(segmenter, image) -> np.ndarray:
    """The image's descriptor: the model's deepest features (the bridge's output), averaged
    over the image and scaled to unit length."""
    import torch

    captured = []
    bridge = segmenter.model.bridge
    hook = bridge.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        segmenter.image_probabilities(image)
    finally:
        hook.remove()
    pooled = torch.cat([c.float().mean(dim=(2, 3)) for c in captured]).mean(0).numpy()
    return pooled / (np.linalg.norm(pooled) + 1e-12)


def _by_features(checkpoint: Path, labelled, pool, count: int, rule, by_errors=False) -> list:
    """``count`` images of ``pool`` chosen by ``rule(candidates, covered, doubt, count)``
    (:func:`weighted_k_center` or :func:`typical_clusters`) over the model's own features of
    the unlabelled and the labelled images and the review queue's doubt of each unlabelled
    one (1 - its quality estimate)."""
    from unet_resnet import Segmenter
    from unet_resnet.io import read_image

    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32", backend="torch")
    doubt, features = [], []
    for image_path, _ in pool:
        image = read_image(image_path)
        doubt.append(_doubts(segmenter, image)[1 if by_errors else 0])
        features.append(_features(segmenter, image))
    covered = np.stack([_features(segmenter, read_image(p)) for p, _ in labelled])
    picked = rule(np.stack(features), covered, np.asarray(doubt), count)
    return [pool[i] for i in picked]


#: typicality: one over the mean distance to this many nearest neighbours (TypiClust's 20)
NEIGHBOURS = 20


def typical_clusters(
    candidates: np.ndarray, covered: np.ndarray, weight: np.ndarray, count: int, seed: int = 0
) -> list[int]:
    """Indices of ``count`` rows of ``candidates``: ``candidates`` and ``covered`` together in
    ``len(covered) + count`` k-means clusters; the clusters holding no ``covered`` row,
    largest first; from each, the candidate whose ``weight`` times typicality (one over its
    mean distance to its :data:`NEIGHBOURS` nearest rows, of both) is largest. Where fewer
    clusters are uncovered than ``count``, the rest by that product alone."""
    from sklearn.cluster import KMeans

    count = min(count, len(candidates))
    points = np.concatenate([candidates, covered])
    clusters = min(len(covered) + count, len(points))
    assign = KMeans(clusters, n_init=10, random_state=seed).fit_predict(points)
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    k = min(NEIGHBOURS, len(points) - 1)
    nearest = np.sort(distance[: len(candidates)], axis=1)[:, 1 : k + 1]
    score = weight / (nearest.mean(axis=1) + 1e-12)
    ours, theirs = assign[: len(candidates)], set(assign[len(candidates) :].tolist())
    sizes = np.bincount(assign, minlength=clusters)
    open_ = sorted(set(ours.tolist()) - theirs, key=lambda c: (-sizes[c], c))
    picked = [int(np.flatnonzero(ours == c)[np.argmax(score[ours == c])]) for c in open_]
    picked = picked[:count]
    for i in np.argsort(-score, kind="stable"):
        if len(picked) == count:
            break
        if int(i) not in picked:
            picked.append(int(i))
    return picked


def weighted_k_center(
    candidates: np.ndarray, covered: np.ndarray, weight: np.ndarray, count: int
) -> list[int]:
    """Indices of ``count`` rows of ``candidates``, greedily: each time the one whose
    distance to the nearest row of ``covered`` or of those already picked, times its
    ``weight``, is largest."""
    distance = np.min(np.linalg.norm(candidates[:, None] - covered[None], axis=-1), axis=1)
    picked: list[int] = []
    for _ in range(min(count, len(candidates))):
        score = distance * weight
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        distance = np.minimum(distance, np.linalg.norm(candidates - candidates[best], axis=-1))
    return picked


#: arm -> its rule over the model's features and the review queue's doubt: the doubt spread
#: over what the labels do not cover yet (rather than the least trusted, which bunch up on
#: the same kind of atypical image), or kept to where the pool is dense
FEATURE_RULES = {
    "diverse": weighted_k_center,
    "typical": typical_clusters,
    "errors-typical": typical_clusters,
}

#: the labelling rules compared: the review queue's order, the same doubt spread over what
#: the labels do not cover yet, or weighed by how typical an image is, and random
ARMS = ("review", "errors", "diverse", "typical", "errors-typical", "random")


def run_dataset(
    name: str,
    root: Path,
    work: Path,
    *,
    rounds: int,
    samples: int,
    encoder: str,
    seed: int,
    per_label: int = 0,
    schedule: tuple[int, int] | None = None,
    arms: Sequence[str] = ARMS,
    known: dict[str, list] | None = None,
) -> dict[str, Any]:
    """The arms on one dataset; ``schedule`` (labelled at the start, added per round)
    defaults to the dataset's :data:`SCHEDULE`; ``known``: arm -> its curve from an earlier
    run with the same settings (:func:`earlier_curves`), taken as it is (the runs are
    deterministic), so that a new arm is measured without rerunning the others."""
    start_count, step = schedule or SCHEDULE[name]
    known = known or {}
    pool = _pairs(root, "train")
    rng = np.random.default_rng(seed)
    first = [pool[i] for i in rng.choice(len(pool), start_count, replace=False)]
    curves: dict[str, list[tuple[int, float]]] = {}
    started = time.perf_counter()
    shared = None
    for arm in arms:
        if arm in known:
            curves[arm] = [(int(n), float(m)) for n, m in known[arm]]
            continue
        labelled = list(first)
        arm_rng = np.random.default_rng(seed + 1)
        curve = []
        for round_ in range(rounds):
            if round_ == 0 and shared is not None:  # the same first model for both arms
                checkpoint, miou = shared
            else:
                data = _subset(root, labelled, work / f"{name}-{arm}-data")
                run = work / f"{name}-{arm}-{round_}"
                budget = round_samples(samples, per_label, len(labelled))
                result = _train(data, run, name, len(labelled), budget, encoder, seed)
                checkpoint = result.best_checkpoint
                miou = _score(checkpoint, root)
                if round_ == 0:
                    shared = (checkpoint, miou)
            curve.append((len(labelled), miou))
            print(f"{name} {arm}: {len(labelled)} labelled, val mIoU {100 * miou:.2f}", flush=True)
            if round_ == rounds - 1:
                break
            rest = [p for p in pool if p not in labelled]
            if not rest:
                break
            if arm == "review":
                labelled += _least_trusted(checkpoint, rest, min(step, len(rest)))
            elif arm == "errors":
                labelled += _most_errors(checkpoint, rest, min(step, len(rest)))
            elif arm in FEATURE_RULES:
                rule = FEATURE_RULES[arm]
                labelled += _by_features(
                    checkpoint,
                    labelled,
                    rest,
                    min(step, len(rest)),
                    rule,
                    by_errors=arm.startswith("errors"),
                )
            else:
                picks = arm_rng.choice(len(rest), min(step, len(rest)), replace=False)
                labelled += [rest[i] for i in picks]
        curves[arm] = curve
    return {
        "dataset": name,
        "pool": len(pool),
        "start": start_count,
        "step": step,
        "samples_per_round": samples,
        "samples_per_label": per_label,
        "encoder": encoder,
        "seed": seed,
        "curves": {arm: [[n, m] for n, m in c] for arm, c in curves.items()},
        **reach_random(curves),
        "seconds": round(time.perf_counter() - started, 1),
    }


def earlier_curves(path: Path, row: dict[str, Any]) -> dict[str, list]:
    """The curves of the run in results file ``path`` that had ``row``'s settings (dataset,
    seed, pool, start, step, samples per round and per label, encoder): arm -> curve; empty
    if none."""
    keys = ("dataset", "seed", "pool", "start", "step", "samples_per_round", "encoder")
    for entry in json.loads(Path(path).read_text())["rows"]:
        for run in entry.get("per_seed", [entry]):
            same_budget = run.get("samples_per_label", 0) == row.get("samples_per_label", 0)
            if same_budget and all(run.get(k) == row[k] for k in keys):
                return run["curves"]
    return {}


def reach_random(curves: dict[str, Sequence[Sequence[float]]]) -> dict[str, Any]:
    """How many labels each arm needs to reach the random arm's final score (None: never)
    and the saving that is (1 - that / random's final count)."""
    target = curves["random"][-1][1]
    final = curves["random"][-1][0]
    reach = {
        arm: next((int(n) for n, miou in curves[arm] if miou >= target), None)
        for arm in curves
        if arm != "random"
    }
    reached = reach.get("review")
    # where random itself got there before its last round (a flat curve: the first labels
    # already did it), a saving against its last count is no merit of the other arm's
    first = next(int(n) for n, miou in curves["random"] if miou >= target)
    return {
        "random_final_miou": target,
        "review_labels_to_reach_it": reached,
        "random_labels": final,
        "saving": None if reached is None else 1 - reached / final,
        "labels_to_reach_random": reach,
        "savings": {arm: None if n is None else 1 - n / final for arm, n in reach.items()},
        "random_first_reach": first,
        "savings_vs_random_first_reach": {
            arm: None if n is None else 1 - n / first for arm, n in reach.items()
        },
    }


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One dataset's runs with several seeds as one row: each arm's curve the mean over the
    seeds (the same label counts in each), the reach measured on the means, and each seed's
    own row under ``per_seed``."""
    if len(rows) == 1:
        return rows[0]
    curves = {}
    for arm in rows[0]["curves"]:
        counts = [n for n, _ in rows[0]["curves"][arm]]
        if any([n for n, _ in r["curves"][arm]] != counts for r in rows):
            raise ValueError(f"{arm}: the seeds' label counts differ")
        scores = np.mean([[m for _, m in r["curves"][arm]] for r in rows], axis=0)
        curves[arm] = [[n, float(m)] for n, m in zip(counts, scores, strict=True)]
    keep = ("dataset", "pool", "start", "step", "samples_per_round", "samples_per_label")
    keep += ("encoder",)
    return {
        **{k: rows[0].get(k) for k in keep},
        "seeds": [r["seed"] for r in rows],
        "curves": curves,
        **reach_random(curves),
        "per_seed": rows,
        "seconds": round(sum(r["seconds"] for r in rows), 1),
    }


#: arm -> its colour, the same in every plot
COLORS = {
    "review": "C0",
    "diverse": "C1",
    "typical": "C2",
    "random": "C3",
    "errors": "C4",
    "errors-typical": "C5",
}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        labels = {
            "review": "least trusted first (check order)",
            "diverse": "doubt + diversity",
            "typical": "doubt + typicality",
            "errors": "most expected errors (label order)",
            "errors-typical": "expected errors + typicality",
            "random": "random",
        }
        styles = {
            "review": "o-",
            "diverse": "^-",
            "typical": "D-",
            "random": "s--",
            "errors": "v-",
            "errors-typical": "P-",
        }
        for arm in row["curves"]:
            curve = np.asarray(row["curves"][arm])
            style, label, color = styles[arm], labels[arm], COLORS[arm]
            for seed in row.get("per_seed", []):  # each seed's own curve, faint
                own = np.asarray(seed["curves"][arm])
                ax.plot(own[:, 0], 100 * own[:, 1], "-", color=color, alpha=0.2, lw=0.8)
            if "per_seed" in row:
                label += f" (mean of {len(row['per_seed'])} seeds)"
            ax.plot(curve[:, 0], 100 * curve[:, 1], style, color=color, label=label)
        ax.set_title(row["dataset"])
        ax.set_xlabel("labelled images")
        ax.set_ylabel("val mIoU (%)")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    # below the panels: inside one, it hides the curves
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.active", description=__doc__
    )
    common_arguments(parser, "benchmarks/results/active.json")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=256, help="samples seen per round")
    parser.add_argument(
        "--samples-per-label",
        type=int,
        default=0,
        help="a round sees at least this many samples per labelled image (0: --samples "
        "whatever the count; else the budget grows with the labels)",
    )
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one run per seed (its first labelled images, its random picks, its training); "
        "the curves are their means",
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--plot", default="docs/images/active-learning.png")
    parser.add_argument(
        "--reuse",
        metavar="JSON",
        help="an earlier results file: arms it measured with the same settings are read from "
        "it, not rerun (add an arm without rerunning the others)",
    )
    parser.add_argument(
        "--rerun",
        nargs="+",
        choices=ARMS,
        default=[],
        help="arms measured anew although the --reuse file has them (after a change to "
        "what they rank by)",
    )
    args = parser.parse_args(argv)

    def one(name: str, root: Path, work: Path) -> dict[str, Any]:
        arms = [*(a for a in args.arms if a != "random"), "random"]  # random: the bar
        runs = []
        for seed in args.seeds:
            known = {}
            if args.reuse:
                start, step = SCHEDULE[name]
                settings = dict(dataset=name, seed=seed, start=start, step=step,
                                samples_per_round=args.samples, encoder=args.encoder,
                                samples_per_label=args.samples_per_label,
                                pool=len(_pairs(root, "train")))  # fmt: skip
                earlier = earlier_curves(args.reuse, settings)
                fresh = set(args.rerun)
                known = {a: c for a, c in earlier.items()
                         if a in arms and a not in fresh and len(c) == args.rounds}  # fmt: skip
            runs.append(
                run_dataset(
                    name, root, work, rounds=args.rounds, samples=args.samples,
                    encoder=args.encoder, seed=seed, arms=arms, known=known,
                    per_label=args.samples_per_label,
                )
            )  # fmt: skip
        row = over_seeds(runs)
        print(
            f"{name}: random reaches {100 * row['random_final_miou']:.2f} with "
            f"{row['random_labels']} labels; "
            + ", ".join(f"{a} with {n}" for a, n in row["labels_to_reach_random"].items()),
            flush=True,
        )
        return row

    info, rows = over_datasets(args, "bench-active-", one)
    plot(rows, Path(args.plot))
    path = write_results(args.json_out, info, rows)
    print(f"\nresults written to {path}; curves in {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
