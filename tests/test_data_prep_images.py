"""python -m data_prep images: real photo files (crops of scikit-learn's sample photographs), every kind
of bad file, unlabeled folders, list files, determinism over workers, atomicity, and the run-start
checks of labels, channels and image size."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

from data_prep import DataPrepError
from data_prep.cli import main, run
from vitssl.config import PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.data import DataError, decode_sample, load_manifest, make_eval_loader, split_shards
from vitssl.data.checks import check_run_data

from fixtures import write_idx_dir
from launching import ROOT, env, launch

PHOTOS = load_sample_images().images  # two real 427x640 photographs
FOLDER = ROOT / "configs/folder"


def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A random crop of a real photograph, rescaled to w x h (photo-like content, not noise)."""
    src = PHOTOS[rng.integers(2)]
    cw, ch = rng.integers(w // 2, min(src.shape[1], 2 * w) + 1), rng.integers(h // 2, min(src.shape[0], 2 * h) + 1)
    x, y = rng.integers(0, src.shape[1] - cw + 1), rng.integers(0, src.shape[0] - ch + 1)
    return Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.BICUBIC)


def image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 5, seed: int = 0) -> Path:
    """root/<class>/<k>.jpg of mixed sizes, all RGB JPEGs."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            photo(rng, int(rng.integers(40, 90)), int(rng.integers(30, 70))).save(root / name / f"{k}.jpg", quality=90)
    return root


def read_samples(out: Path, split: str) -> list[dict]:
    """Every sample of a split as its raw tar members (+ "meta"), in index order."""
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for shard in manifest["splits"][split]["shards"]:
        members: dict[str, dict] = {}
        with tarfile.open(out / shard["name"]) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
        rows += members.values()
    for row in rows:
        row["meta"] = json.loads(row.pop("json"))
    return rows


def by_source(out: Path, split: str) -> dict[str, dict]:
    return {r["meta"]["source_id"]: r for r in read_samples(out, split)}


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "manifest.json"}


# ---------------------------------------------------------------- the bad-file zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, Path, str]:
    """train/{cat,dog,eel} (mixed sizes) + every kind of odd file in cat/, and val/ from the tree."""
    src = tmp_path_factory.mktemp("zoo") / "photos"
    image_folder(src / "train")
    image_folder(src / "val", per_class=2, seed=1)
    rng = np.random.default_rng(5)
    cat = src / "train/cat"
    photo(rng, 64, 48).convert("L").save(cat / "gray.jpg", quality=90)
    photo(rng, 64, 48).convert("CMYK").save(cat / "cmyk.jpg", quality=90)
    rgba = photo(rng, 64, 48).convert("RGBA")
    alpha = np.full((48, 64), 255, np.uint8)
    alpha[:, :32] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(cat / "alpha.png")
    photo(rng, 64, 48).convert("P", palette=Image.Palette.ADAPTIVE).save(cat / "palette.png")
    gray8 = np.asarray(photo(rng, 64, 48).convert("L"))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(cat / "deep16.png")  # 16-bit grayscale
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo(rng, 80, 40).save(cat / "rotated.jpg", quality=90, exif=exif)
    whole = (cat / "0.jpg").read_bytes()
    (cat / "truncated.jpg").write_bytes(whole[: len(whole) * 4 // 5])  # the header reads; the pixels end early
    (cat / "notes.jpg").write_text("not a picture\n")
    (cat / "empty.jpg").write_bytes(b"")
    out = src.parent / "shards"
    text = run(["images", str(src), "--out", str(out)])
    return src, out, text


def test_bad_files_are_converted_or_listed(zoo):
    src, out, text = zoo
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert sorted(skipped) == ["train/cat/empty.jpg", "train/cat/notes.jpg", "train/cat/truncated.jpg"]
    assert skipped["train/cat/empty.jpg"] == "empty file (0 bytes)"
    assert skipped["train/cat/notes.jpg"] == "not an image Pillow can read"
    assert skipped["train/cat/truncated.jpg"].startswith("corrupt or truncated (image file is truncated")
    assert "skipped: 3 file(s) (" in text and "1 empty file," in text
    rows = by_source(out, "train")
    assert len(rows) == 15 + 6 and all(r["cls"] for r in rows.values())
    for source_id, row in rows.items():
        image = decode_sample(row)["image"]
        assert image.shape[0] == 3, source_id  # the majority: colour
    # a plain RGB JPEG is stored as it was: no generation loss
    assert rows["train/cat/1.jpg"]["jpg"] == (src / "train/cat/1.jpg").read_bytes()
    # CMYK and grayscale JPEGs are re-encoded as RGB JPEG; PNGs stay lossless PNG
    assert Image.open(io.BytesIO(rows["train/cat/cmyk.jpg"]["jpg"])).mode == "RGB"
    assert Image.open(io.BytesIO(rows["train/cat/gray.jpg"]["jpg"])).mode == "RGB"
    for name in ("alpha", "palette", "deep16"):
        assert Image.open(io.BytesIO(rows[f"train/cat/{name}.png"]["png"])).mode == "RGB", name
    # transparent pixels become white, opaque ones keep their colour
    alpha = np.asarray(Image.open(io.BytesIO(rows["train/cat/alpha.png"]["png"])))
    original = np.asarray(Image.open(src / "train/cat/alpha.png"))
    assert (alpha[:, :32] == 255).all() and (alpha[:, 32:] == original[:, 32:, :3]).all()
    # 16-bit values are rescaled to 8 bits, not clipped at 255
    deep = np.asarray(Image.open(io.BytesIO(rows["train/cat/deep16.png"]["png"])))[..., 0]
    gray8 = np.asarray(Image.open(src / "train/cat/deep16.png")).astype(np.int64) // 257
    assert np.abs(deep.astype(np.int64) - gray8).max() <= 1 and deep.std() > 10
    # EXIF orientation applied: 80x40 stored upright as 40x80, content rotated
    stored = Image.open(io.BytesIO(rows["train/cat/rotated.jpg"]["jpg"]))
    assert stored.size == (40, 80) and stored.getexif().get(0x0112, 1) == 1
    upright = np.asarray(ImageOps.exif_transpose(Image.open(src / "train/cat/rotated.jpg")), dtype=np.float64)
    assert np.abs(np.asarray(stored, dtype=np.float64) - upright).mean() < 4


def test_manifest_knows_the_images(zoo):
    src, out, _ = zoo
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["cat", "dog", "eel"] and manifest["skipped"] == 3
    assert json.loads((out / "classes.json").read_text()) == {"cat": 0, "dog": 1, "eel": 2}
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert (train["count"], val["count"]) == (21, 6)  # splits from the tree
    assert train["labels"] == val["labels"] == "cls" and train["classes"] == {"cat": 0, "dog": 1, "eel": 2}
    assert train["channels"] == 3 and train["per_class"] == {"cat": 11, "dog": 5, "eel": 5}
    sizes = [Image.open(io.BytesIO(r.get("jpg") or r.get("png"))).size for r in read_samples(out, "train")]
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    assert train["width"] == {"min": widths[0], "median": widths[(len(widths) - 1) // 2], "max": widths[-1]}
    assert train["height"] == {"min": heights[0], "median": heights[(len(heights) - 1) // 2], "max": heights[-1]}
    assert train["kept_original"] == 15  # the plain JPEGs (the rotated one is re-encoded)
    assert all(r["cls"] == str(train["classes"][r["meta"]["class_name"]]).encode() for r in read_samples(out, "train"))
    printed = run(["summary", str(out)])
    assert "train: 21 images" in printed and "width 40/" in printed and "3 channel(s)" in printed


def test_rerun_is_up_to_date_and_changed_options_rewrite(zoo, tmp_path):
    src, out, _ = zoo
    before = tree_bytes(out)
    assert run(["images", str(src), "--out", str(out)]).startswith("up to date")
    assert tree_bytes(out) == before
    again = tmp_path / "again"
    run(["images", str(src), "--out", str(again), "--max-side", "48", "--workers", "2"])
    assert run(["images", str(src), "--out", str(again), "--max-side", "48"]).startswith("up to date")
    manifest = json.loads((again / "manifest.json").read_text())
    assert manifest["splits"]["train"]["width"]["max"] == 48 and manifest["splits"]["train"]["height"]["max"] <= 48


def test_out_inside_the_source_is_refused(zoo):
    with pytest.raises(DataPrepError, match="lies inside .*write them elsewhere"):
        run(["images", str(zoo[0]), "--out", str(zoo[0] / "shards")])
    assert not (zoo[0] / "shards").exists()


def test_strict_names_the_first_bad_file(zoo, tmp_path):
    with pytest.raises(DataPrepError, match=r"train/cat/empty\.jpg: empty file.*--strict"):
        run(["images", str(zoo[0]), "--out", str(tmp_path / "s"), "--strict"])
    assert not (tmp_path / "s").exists()


def test_workers_give_byte_identical_shards(tmp_path):
    src = image_folder(tmp_path / "src", per_class=8)
    common = ["--max-side", "48", "--val-per-class", "2", "--shard-max-count", "5", "--format", "png"]
    run(["images", str(src), "--out", str(tmp_path / "w1"), "--workers", "1", *common])
    run(["images", str(src), "--out", str(tmp_path / "w2"), "--workers", "2", *common])
    one, two = tree_bytes(tmp_path / "w1"), tree_bytes(tmp_path / "w2")
    assert len([n for n in one if n.endswith(".tar")]) == 6 and one == two
    manifest = json.loads((tmp_path / "w1/manifest.json").read_text())
    assert manifest["splits"]["val"]["per_class"] == {"cat": 2, "dog": 2, "eel": 2}  # stratified


# ---------------------------------------------------------------- layouts


def test_unlabeled_folder_has_no_cls_and_reads_with_label_minus_one(tmp_path):
    src = tmp_path / "holiday"
    rng = np.random.default_rng(2)
    (src / "day2").mkdir(parents=True)
    for k in range(6):
        photo(rng, 50, 40).save(src / f"{k}.jpg")
        photo(rng, 40, 50).save(src / "day2" / f"{k}.jpg")
    with pytest.raises(DataPrepError, match="beside class folders.*--unlabeled"):
        run(["images", str(src), "--out", str(tmp_path / "x")])
    out = tmp_path / "unl"
    text = run(["images", str(src), "--out", str(out), "--unlabeled", "--size", "32", "--val-fraction", "0.25"])
    assert "no labels" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == [] and not (out / "classes.json").exists()
    assert {s: (i["count"], i["labels"]) for s, i in manifest["splits"].items()} == {"train": (9, "none"),
                                                                                   "val": (3, "none")}
    assert all("cls" not in r for r in read_samples(out, "train"))
    batch = next(iter(make_eval_loader(out, "train", batch_size=16)))
    assert batch["image"].shape == (9, 3, 32, 32) and (batch["label"] == -1).all()
    # index on the same shards records labels none too
    run(["index", str(out / "train-000000.tar"), "--out", str(tmp_path / "idx")])
    assert json.loads((tmp_path / "idx/manifest.json").read_text())["splits"]["train"]["labels"] == "none"
    with pytest.raises(DataPrepError, match="--val-per-class needs labels"):
        run(["images", str(src), "--out", str(tmp_path / "y"), "--unlabeled", "--val-per-class", "1"])


def test_list_files_csv_with_splits_and_tsv_without_labels(tmp_path):
    src = image_folder(tmp_path / "elsewhere", classes=("a", "b"), per_class=3)
    rows = [f"elsewhere/{c}/{k}.jpg,{c},{'val' if k == 0 else 'train'}" for c in ("a", "b") for k in range(3)]
    (tmp_path / "list.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "from_csv"
    run(["images", str(tmp_path / "list.csv"), "--out", str(out), "--channels", "1"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: i["per_class"] for s, i in manifest["splits"].items()} == {"train": {"a": 2, "b": 2},
                                                                        "val": {"a": 1, "b": 1}}
    rows = read_samples(out, "train")
    assert all(Image.open(io.BytesIO(r["png"])).mode == "L" for r in rows)  # grayscale is stored as PNG
    assert manifest["splits"]["train"]["channels"] == 1
    (tmp_path / "list.tsv").write_text("".join(f"{p}\n" for p in sorted(src.rglob("*.jpg"))))
    run(["images", str(tmp_path / "list.tsv"), "--out", str(tmp_path / "from_tsv")])
    assert json.loads((tmp_path / "from_tsv/manifest.json").read_text())["splits"]["train"]["labels"] == "none"
    (tmp_path / "bad.csv").write_text("a.jpg,x\nb.jpg\n")
    with pytest.raises(DataPrepError, match="same 1 to 3 columns"):
        run(["images", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "bad")])


def test_grayscale_majority_is_stored_as_grayscale_png(tmp_path):
    src = image_folder(tmp_path / "src", classes=("x", "y"), per_class=3)
    for path in list(src.rglob("[01].jpg")):
        Image.open(path).convert("L").save(path)
    out = tmp_path / "out"
    run(["images", str(src), "--out", str(out)])
    info = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert info["channels"] == 1 and info["kept_original"] == 0
    assert {decode_sample(r)["image"].shape[0] for r in read_samples(out, "train")} == {1}
    with pytest.raises(DataPrepError, match="--format jpg stores colour"):
        run(["images", str(src), "--out", str(tmp_path / "j"), "--format", "jpg"])


@pytest.mark.parametrize("make, message", [
    (lambda src: (src / "dog").mkdir(), r"class folder .*dog is empty"),
    (lambda src: (src / "dog").mkdir() or (src / "dog/a.jpg").write_bytes(b""), r"class 'dog' has no usable image"),
    (lambda src: (src / "loose.jpg").write_bytes(b"x"), "beside class folders"),
])
def test_bad_trees_are_one_error_and_write_nothing(tmp_path, capsys, make, message):
    src = image_folder(tmp_path / "src", classes=("cat", "eel"), per_class=2)
    make(src)
    assert main(["images", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- atomicity


@pytest.mark.slow
def test_kill_9_mid_write_leaves_nothing_a_reader_accepts(tmp_path):
    src = image_folder(tmp_path / "src", per_class=40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep", "images", str(src), "--out", str(out), "--shard-max-count", "2",
           "--format", "png"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out.exists() and len(list(out.glob(".tmp-train-*"))) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "data_prep ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("train-*.tar"))  # only .tmp- files, which no reader lists
    with pytest.raises(DataError, match="no manifest.json"):
        load_manifest(out)
    with pytest.raises(DataError, match="no manifest.json"):
        split_shards(out, "train")
    assert run(["images", str(src), "--out", str(out), "--shard-max-count", "2", "--format", "png"])
    assert not list(out.glob(".tmp-*")) and len(list(out.glob("train-*.tar"))) == 60


# ---------------------------------------------------------------- run-start checks


@pytest.fixture(scope="module")
def sized(tmp_path_factory) -> dict[str, Path]:
    """Labeled 32x32 shards (train + val), the same unlabeled, and mixed-size labeled ones."""
    root = tmp_path_factory.mktemp("sized")
    src = image_folder(root / "src", per_class=4)
    shards = {"labeled": root / "labeled", "unlabeled": root / "unlabeled", "mixed": root / "mixed"}
    run(["images", str(src), "--out", str(shards["labeled"]), "--size", "32", "--val-per-class", "1"])
    run(["images", str(src), "--out", str(shards["unlabeled"]), "--size", "32", "--unlabeled",
         "--val-fraction", "0.25"])
    run(["images", str(src), "--out", str(shards["mixed"]), "--val-per-class", "1"])
    return shards


def pretrain_cfg(shards: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, FOLDER / "mae.yaml", [f"data.shards={shards}", "data.image_size=32", *overrides])


def finetune_cfg(shards: Path, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, FOLDER / "linear.yaml", [f"data.shards={shards}", "data.image_size=32",
                                                                 "finetune.num_classes=3", *overrides])


def test_matching_data_passes_the_checks(sized, mnist012):
    check_run_data(pretrain_cfg(sized["unlabeled"]))
    check_run_data(finetune_cfg(sized["labeled"]))
    check_run_data(finetune_cfg(sized["labeled"], "finetune.mode=finetune"))
    # manifests without the per-split fields (data_prep mnist) are checked from their `image` field
    check_run_data(load_config(FinetuneConfig, ROOT / "configs/mnist012/finetune.yaml", [f"data.shards={mnist012}"]))


@pytest.mark.parametrize("which, make, message", [
    ("unlabeled", finetune_cfg, "split 'train' of .* has no labels .*finetune.mode linear needs them"),
    ("unlabeled", lambda s: finetune_cfg(s, "finetune.mode=knn", "data.split=val"), "finetune.mode knn needs them"),
    ("unlabeled", lambda s: pretrain_cfg(s, "objective.name=classify"),
     "no labels .*objective classify needs them"),
    ("labeled", lambda s: finetune_cfg(s, "finetune.num_classes=2"),
     "has 3 classes but finetune.num_classes is 2: set finetune.num_classes=3"),
    ("labeled", lambda s: pretrain_cfg(s, "data.channels=1"),
     r"holds 3-channel images but data.channels is 1 .*set data.channels=3, or re-run .* with --channels 1"),
    ("labeled", lambda s: pretrain_cfg(s, "data.image_size=64"),
     r"holds 32x32 images but data.image_size is 64: set data.image_size=32, or re-run .* with --size 64 "
     r"\(in place of --size\)"),
    ("mixed", lambda s: pretrain_cfg(s), r"mixed sizes \(width \d+\.\.\d+, height \d+\.\.\d+\).* with --size 32"),
])
def test_mismatches_are_one_line_naming_both_values(sized, which, make, message):
    with pytest.raises(DataError, match=message) as err:
        check_run_data(make(sized[which]))
    assert "\n" not in str(err.value)


def test_old_manifests_are_checked_from_the_first_sample(sized, tmp_path):
    """An `index` manifest (no image fields) and the MNIST label-withheld split (.cls -1)."""
    run(["index", str(sized["labeled"] / "train-000000.tar"), str(sized["labeled"] / "val-000000.tar"),
         "--out", str(tmp_path / "idx")])
    check_run_data(finetune_cfg(tmp_path / "idx"))
    with pytest.raises(DataError, match="holds 32x32 images but data.image_size is 28"):
        check_run_data(finetune_cfg(tmp_path / "idx", "data.image_size=28"))
    write_idx_dir(tmp_path / "idx_files", train_per_class=4, test_per_class=2)
    unl = tmp_path / "m"
    run(["mnist", "--source", f"idx:{tmp_path / 'idx_files'}", "--out", str(unl), "--unlabeled-rest", "--per-class", "2"])
    cfg = load_config(FinetuneConfig, ROOT / "configs/mnist012/finetune.yaml",
                      [f"data.shards={unl}", "data.split=unlabeled", "finetune.mode=linear"])
    with pytest.raises(DataError, match="split 'unlabeled' .* has no labels"):
        check_run_data(cfg)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_pretrain_on_unlabeled_then_linear_probe_on_labeled(sized, tmp_path):
    small = ["data.image_size=32", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
             "objective.decoder_dim=32", "objective.decoder_depth=1", "data.batch_size=8", "data.num_workers=0",
             "run.figure_every=0", f"run.output_dir={tmp_path}/mae"]
    launch("pretrain.py", "configs/folder/mae.yaml", [f"data.shards={sized['unlabeled']}", "run.max_steps=3",
                                                      *small], tmp_path)
    assert list((tmp_path / "mae").glob("checkpoint-*"))
    out = launch("finetune.py", "configs/folder/linear.yaml",
                 [f"data.shards={sized['labeled']}", "data.image_size=32", "finetune.num_classes=3",
                  f"finetune.pretrained={tmp_path}/mae", "finetune.tsne=false", "finetune.linear_steps=20",
                  f"run.output_dir={tmp_path}/linear"], tmp_path)
    assert "val accuracy:" in out.stdout
    # the fine-tune on the unlabeled shards stops before any step, with one line
    bad = subprocess.run([sys.executable, str(ROOT / "launch/finetune.py"), "--config", str(FOLDER / "finetune.yaml"),
                          f"data.shards={sized['unlabeled']}", "data.image_size=32", "finetune.num_classes=3",
                          f"finetune.pretrained={tmp_path}/mae", f"run.output_dir={tmp_path}/ft"],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: split 'train' of {sized['unlabeled']} has no labels (no .cls), but finetune.mode finetune needs them: "
        "point data.shards/data.split at a labeled split (e.g. `python -m data_prep images <folder of class folders> "
        "--out DIR`)"]
    assert not (tmp_path / "ft").exists()


def test_shards_made_elsewhere_without_labels_train_label_free_only(tmp_path):
    """A tar of bare .jpg members (webdataset keys, no .cls), given as a URL list: no manifest at all."""
    rng = np.random.default_rng(3)
    with tarfile.open(tmp_path / "train-000000.tar", "w") as tar:
        for key in ("holiday_a", "holiday_b", "holiday_c"):
            buf = io.BytesIO()
            photo(rng, 32, 32).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = buf.tell()
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    spec = str(tmp_path / "train-000000.tar")
    check_run_data(pretrain_cfg(spec, "run.figure_every=0"))
    with pytest.raises(DataError, match="split 'train' of .* has no labels"):
        check_run_data(finetune_cfg(spec, "data.eval_split=train"))
    with pytest.raises(DataError, match="holds 32x32 images but data.image_size is 64"):
        check_run_data(pretrain_cfg(spec, "run.figure_every=0", "data.image_size=64"))
