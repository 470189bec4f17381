"""Does the data fit the run? Checked once at run start, before any process trains a step.

Three questions, each answered from the manifest where it knows (``data_prep images`` writes per
split ``labels``, ``channels``, ``width``/``height``; ``data_prep mnist``/``tiny-imagenet`` a
top-level ``image``), else from the first sample of the split, decoded as the loader decodes it:

- labels: fine-tuning, linear probes, kNN and the supervised ``classify`` objective need them;
  the pretext objectives (MAE, InfoNCE, Video-MAE, the CNN ones) read none.
- channels: the images' against ``data.channels`` (which the encoder's ``in_chans`` follows).
- size: the images' against ``data.image_size``, as long as the loader hands images on as they
  are stored (no crop on read): mixed sizes cannot be batched, another size does not fit the model.

Each failure is one DataError line naming both values and the override (or data_prep option) that
fixes it.
"""
from __future__ import annotations

from dataclasses import dataclass

from vitssl.data.manifest import DataError

# Pretraining objectives that read batch["label"]; every other one trains on unlabeled shards.
LABELED_OBJECTIVES = frozenset({"classify"})


@dataclass(frozen=True)
class SplitFacts:
    labels: bool | None  # None: not known (an empty split)
    channels: int | None
    width: tuple[int, int] | None  # (min, max)
    height: tuple[int, int] | None
    num_classes: int | None


def _first_sample(spec: str, split: str) -> dict | None:
    from vitssl.data.samples import decode_sample
    from vitssl.data.sources import split_shards
    from vitssl.data.tar_stream import read_shard

    for shard in split_shards(spec, split, check_sha=False):
        if shard.count:
            _, raw = next(read_shard(shard, stop=1, verify=False))
            return decode_sample(raw | {"__index__": 0})  # keys of shards made elsewhere need not end in -N
    return None


def split_facts(spec: str, split: str, manifest: dict, need_labels: bool) -> SplitFacts | None:
    """What the manifest (or, where it is silent, the first sample) says about ``split``; None when
    the manifest has no such split (the loader's own error names it)."""
    info = manifest.get("splits", {}).get(split)
    if not isinstance(info, dict):
        return None
    image = manifest.get("image") if isinstance(manifest.get("image"), dict) else {}
    labels = {"cls": True, "none": False}.get(info.get("labels"))
    channels = info.get("channels") or image.get("channels")
    if "width" in info and "height" in info:
        width, height = (info["width"]["min"], info["width"]["max"]), (info["height"]["min"], info["height"]["max"])
    elif "width" in image and "height" in image:
        width, height = (image["width"],) * 2, (image["height"],) * 2
    else:
        width = height = None
    if (labels is None and need_labels) or channels is None or width is None:
        sample = _first_sample(spec, split)
        if sample is not None:
            c, h, w = sample["image"].shape
            labels = labels if labels is not None else int(sample["label"]) >= 0  # -1: withheld
            channels, width, height = channels or c, width or (w, w), height or (h, h)
    classes = info.get("classes") or manifest.get("classes")
    return SplitFacts(labels, channels, width, height, len(classes) if classes else None)


def _fix_data_prep(manifest: dict, option: str) -> str:
    if manifest.get("dataset") != "images":
        return f"shard the images with `python -m data_prep images SRC --out DIR {option}`"
    command = manifest.get("command", "python -m data_prep images ...")
    replaced = [flag for flag in (option.split()[0], "--max-side") if f" {flag} " in f" {command} "]
    return f"re-run `{command}` with {option}" + (f" (in place of {replaced[0]})" if replaced else "")


def check_split(facts: SplitFacts, where: str, manifest: dict, *, channels: int, image_size: int,
                need_labels: str | None, num_classes: int | None, crop_on_read: bool = False) -> None:
    """Raise one DataError line for the first mismatch. ``need_labels``: why labels are needed, or None."""
    if need_labels and facts.labels is False:
        raise DataError(f"{where} has no labels (no .cls), but {need_labels} needs them: point data.shards/"
                        f"data.split at a labeled split (e.g. `python -m data_prep images <folder of class "
                        f"folders> --out DIR`)")
    if need_labels and num_classes is not None and facts.num_classes and facts.num_classes > num_classes:
        raise DataError(f"{where} has {facts.num_classes} classes but finetune.num_classes is {num_classes}: "
                        f"set finetune.num_classes={facts.num_classes}")
    if facts.channels is not None and facts.channels != channels:
        raise DataError(f"{where} holds {facts.channels}-channel images but data.channels is {channels} "
                        f"(model.in_chans follows it): set data.channels={facts.channels}, or "
                        f"{_fix_data_prep(manifest, f'--channels {channels}')}")
    if crop_on_read or facts.width is None or facts.height is None:
        return
    (w0, w1), (h0, h1) = facts.width, facts.height
    if (w0, h0) != (w1, h1):
        raise DataError(f"{where} holds images of mixed sizes (width {w0}..{w1}, height {h0}..{h1}) and the loader "
                        f"does not crop them: {_fix_data_prep(manifest, f'--size {image_size}')} "
                        f"(data.image_size {image_size})")
    if (w0, h0) != (image_size, image_size):
        fix = f"set data.image_size={w0}, or " if w0 == h0 else ""
        raise DataError(f"{where} holds {w0}x{h0} images but data.image_size is {image_size}: {fix}"
                        f"{_fix_data_prep(manifest, f'--size {image_size}')}")


def _reads(cfg) -> dict[str, str | None]:
    """The splits the run reads -> why it needs their labels (None: it reads images only)."""
    data = cfg.data
    ft = getattr(cfg, "finetune", None)
    if ft is None:
        name = cfg.objective.get("name")
        splits = {data.split: f"objective {name}" if name in LABELED_OBJECTIVES else None}
        if cfg.run.figure_every:
            splits.setdefault(data.eval_split, None)  # a batch of images for the figures
        return splits
    mode = f"finetune.mode {ft.mode}"
    splits = {data.split: None if ft.mode == "finetune" and ft.teacher != "none" else mode}
    for split in ft.splits(data):
        splits[split] = mode  # accuracy needs the true labels
    return splits


def check_run_data(cfg, crop_on_read: bool = False) -> None:
    """Every split the run reads fits its config (pretraining and fine-tuning configs alike)."""
    from vitssl.data.sources import source_manifest

    reads = _reads(cfg)
    manifest = source_manifest(cfg.data.shards, list(reads))
    ft = getattr(cfg, "finetune", None)
    for split, need_labels in reads.items():
        facts = split_facts(cfg.data.shards, split, manifest, need_labels is not None)
        if facts is None:
            continue
        check_split(facts, f"split {split!r} of {cfg.data.shards}", manifest, channels=cfg.data.channels,
                    image_size=cfg.data.image_size, need_labels=need_labels,
                    num_classes=ft.num_classes if ft is not None else None, crop_on_read=crop_on_read)
