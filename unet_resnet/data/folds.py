"""k-fold cross-validation splits, by case.

A case is what must never be split between training and validation: a volume for NIfTI data
(all its slices go together), an image for the image layouts. The cases of the training split
are sorted by name, shuffled with a seed and dealt into ``k`` folds; the split is written to
``splits.json`` and read back by every later run (and every fold of ``cross-validate``), so it
is stable across runs and machines. A ``splits.json`` made for other cases or another ``k`` is
an error rather than silently replaced.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from unet_resnet.data.classes import DataError
from unet_resnet.io import atomic_path

__all__ = [
    "CaseSubset",
    "case_groups",
    "fold_indices",
    "load_or_make_splits",
    "make_folds",
    "restrict_to_cases",
]


def case_groups(dataset) -> dict[str, list[int]]:
    """Case name -> the dataset indices that belong to it, in order."""
    from unet_resnet.volumes import case_name

    if hasattr(dataset, "index") and hasattr(dataset, "pairs"):  # slices of volumes
        groups: dict[str, list[int]] = {}
        for i, (volume, _) in enumerate(dataset.index):
            groups.setdefault(case_name(dataset.pairs[volume][0]), []).append(i)
        return groups
    if hasattr(dataset, "pairs") and not hasattr(dataset, "window_at"):
        groups = {}
        for i, (image, _) in enumerate(dataset.pairs):
            name = Path(image).name
            if name in groups:
                name = str(image)
            groups[name] = [i]
        return groups
    raise DataError(
        "Cross-validation folds need a dataset made of cases (images or volumes); this layout "
        "samples windows of scenes. Use a val split instead of --folds."
    )


def make_folds(cases: list[str], k: int, seed: int = 0) -> list[list[str]]:
    """Deal the sorted, seeded-shuffled ``cases`` into ``k`` folds of (nearly) equal size."""
    if k < 2:
        raise DataError(f"Cross-validation needs at least 2 folds, got {k}.")
    if len(cases) < k:
        raise DataError(f"{len(cases)} training cases cannot make {k} folds; use fewer folds.")
    order = np.random.default_rng(seed).permutation(len(cases))
    ordered = [sorted(cases)[i] for i in order]
    return [sorted(ordered[f::k]) for f in range(k)]


def load_or_make_splits(
    path: str | os.PathLike, cases: list[str], k: int, seed: int = 0
) -> list[list[str]]:
    """The folds in ``path`` if it exists (checked against ``cases`` and ``k``), else new
    folds written there."""
    path = Path(path)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            folds = [list(map(str, fold)) for fold in saved["folds"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path} is not a splits file: {exc}") from None
        if len(folds) != k or sorted(c for fold in folds for c in fold) != sorted(cases):
            raise DataError(
                f"{path} holds {len(folds)} folds of other cases than these {len(cases)} "
                f"training cases with --folds {k}. Remove it to make new folds, or use the data "
                "and --folds it was made for."
            )
        return folds
    folds = make_folds(cases, k, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"k": k, "seed": seed, "folds": folds}, indent=1) + "\n")
    return folds


def fold_indices(
    groups: dict[str, list[int]], folds: list[list[str]], fold: int
) -> tuple[list[int], list[int]]:
    """``(training indices, validation indices)`` of fold ``fold``."""
    if not 0 <= fold < len(folds):
        raise DataError(f"--fold {fold} is not one of 0..{len(folds) - 1}.")
    held_out = set(folds[fold])
    train = [i for case, idx in groups.items() if case not in held_out for i in idx]
    val = [i for case, idx in groups.items() if case in held_out for i in idx]
    return train, val


class CaseSubset(Dataset):
    """Some indices of a dataset, with a transform of their own (the dataset is copied, so a
    training and a validation subset of one dataset can transform differently)."""

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset = copy.copy(dataset)
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    def load(self, index: int):
        return self.dataset.load(self.indices[index])

    @property
    def classes(self):
        return self.dataset.classes

    @classes.setter
    def classes(self, value) -> None:
        self.dataset.classes = value

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value


def restrict_to_cases(dataset, cases: list[str]):
    """The part of ``dataset`` made of ``cases`` (volumes stay a volume dataset, so that
    per-case evaluation sees whole cases)."""
    from unet_resnet.data.layouts.nifti import NiftiSliceDataset
    from unet_resnet.volumes import case_name

    wanted = set(cases)
    if isinstance(dataset, NiftiSliceDataset):
        pairs = [p for p in dataset.pairs if case_name(p[0]) in wanted]
        return NiftiSliceDataset(
            pairs,
            dataset.classes,
            axis=dataset.axis,
            context=dataset.context,
            intensity=dataset.intensity,
            target_spacing=dataset.target_spacing,
        )
    groups = case_groups(dataset)
    return CaseSubset(dataset, [i for case in cases for i in groups.get(case, [])])
