"""python -m data_prep: round trips, determinism, idempotence, atomicity and every bad input."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_prep.mnist
import data_prep.writer
from data_prep import DataPrepError
from data_prep.cli import run
from vitssl.data import load_split_tensors

from fixtures import (
    IDX_NAMES,
    TINY_WORDS,
    idx_bytes,
    make_mnist_shards,
    tiny_imagenet_files,
    write_idx_dir,
    write_tiny_folder,
    write_tiny_zip,
)

REPO = Path(__file__).resolve().parents[1]
# Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) installs the four
# gzipped IDX files here.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def read_split(out: Path, split: str) -> list[dict]:
    """Every sample of a split as {"png"/"jpg": bytes, "cls": int, "meta": dict}, in index order."""
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for shard in manifest["splits"][split]["shards"]:
        for key, members in read_tar(out / shard["name"]).items():
            meta = json.loads(members.pop("json"))
            assert key == f"{split}-{meta['index']:07d}"
            rows.append({**members, "cls": int(members.pop("cls")), "meta": meta})
    assert [r["meta"]["index"] for r in rows] == list(range(len(rows)))
    return rows


def files_in(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


# ---------------------------------------------------------------- MNIST


def test_embedded_default_is_real_mnist_100_per_class(tmp_path, capsys):
    out = tmp_path / "mnist012"
    assert run(["mnist", "--out", str(out)]).startswith("mnist shards in")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["0", "1", "2"]
    assert manifest["image"] == {"height": 28, "width": 28, "channels": 1, "format": "png"}
    ids = {}
    for split in ("train", "test"):
        info = manifest["splits"][split]
        assert info["count"] == 300 and info["per_class"] == {"0": 100, "1": 100, "2": 100}
        rows = read_split(out, split)
        assert all(r["cls"] == r["meta"]["label"] == int(r["meta"]["class_name"]) for r in rows)
        ids[split] = {r["meta"]["source_id"] for r in rows}
        assert len(ids[split]) == 300
    assert not ids["train"] & ids["test"]
    images, labels, _ = load_split_tensors(out, "train")
    assert 0.08 < images.mean() < 0.2  # MNIST's mean intensity is about 0.13
    assert labels[:30].unique().numel() == 3  # classes are mixed, not sorted


def test_idx_round_trip_is_lossless(tmp_path):
    arrays = write_idx_dir(tmp_path / "idx", gz=True)
    out = tmp_path / "out"
    run(["mnist", "--source", f"idx:{tmp_path / 'idx'}", "--digits", "3-5,7", "--per-class", "all",
         "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["3", "4", "5", "7"]
    assert manifest["source"]["kind"] == "idx" and len(manifest["source"]["sha256"]) == 4
    for split, pool, per_class in (("train", "train", 20), ("test", "t10k", 8)):
        images, labels = arrays[split]
        rows = read_split(out, split)
        assert manifest["splits"][split]["per_class"] == {c: per_class for c in ["3", "4", "5", "7"]}
        for row in rows:
            name, r = row["meta"]["source_id"].split(":")
            assert name == pool
            pixels = np.array(Image.open(io.BytesIO(row["png"])))
            np.testing.assert_array_equal(pixels, images[int(r)])
            assert row["meta"]["class_name"] == str(labels[int(r)])
            assert row["cls"] == manifest["classes"].index(str(labels[int(r)]))
        decoded, _, _ = load_split_tensors(out, split)
        first = int(rows[0]["meta"]["source_id"].split(":")[1])
        np.testing.assert_array_equal((decoded[0, 0] * 255).round().byte().numpy(), images[first])


def test_shard_limits(tmp_path):
    out = tmp_path / "out"
    run(["mnist", "--out", str(out), "--shard-max-count", "70"])
    train = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert [s["count"] for s in train["shards"]] == [70, 70, 70, 70, 20]
    assert sorted(files_in(out)) == sorted(["manifest.json"] + [f"{s}-{i:06d}.tar" for s in ("train", "test")
                                                                for i in range(5)])
    run(["mnist", "--out", str(out), "--shard-max-bytes", str(100 * 3 * 1024)])
    train = json.loads((out / "manifest.json").read_text())["splits"]["train"]
    assert len(train["shards"]) > 2 and all(s["bytes"] <= 100 * 3 * 1024 for s in train["shards"])


def test_deterministic_and_idempotent(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run(["mnist", "--out", str(a), "--shard-max-count", "100"])
    run(["mnist", "--out", str(b), "--per-class", "100", "--shard-max-count", "100"])
    assert files_in(a) == files_in(b)
    for name in files_in(a):
        if name != "manifest.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma.pop("command") != mb.pop("command") and ma == mb
    assert "20" not in json.dumps(ma["options"])  # nothing time-dependent, e.g. a year

    mtimes = {p.name: p.stat().st_mtime_ns for p in a.iterdir()}
    assert sys.modules["data_prep.cli"].main(["mnist", "--out", str(a), "--train-per-class", "100",
                                              "--shard-max-count", "100"]) == 0
    assert capsys.readouterr().out.startswith(f"up to date: {a}")
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir()} == mtimes


def test_changed_options_rewrite_and_remove_stale_shards(tmp_path):
    out = tmp_path / "out"
    run(["mnist", "--out", str(out), "--shard-max-count", "50"])
    assert len(files_in(out)) == 13
    run(["mnist", "--out", str(out), "--per-class", "20"])
    assert files_in(out) == ["manifest.json", "test-000000.tar", "train-000000.tar"]
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["count"] == 60
    # a corrupt shard is not "up to date": it is rewritten
    (out / "train-000000.tar").write_bytes(b"broken")
    assert not run(["mnist", "--out", str(out), "--per-class", "20"]).startswith("up to date")
    assert run(["mnist", "--out", str(out), "--per-class", "20"]).startswith("up to date")


def test_failure_midway_leaves_no_manifest_and_no_temp_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    encode, calls = data_prep.mnist.encode_png, []

    def failing_encode(image):
        calls.append(1)
        if len(calls) > 150:
            raise RuntimeError("disk on fire")
        return encode(image)

    monkeypatch.setattr(data_prep.mnist, "encode_png", failing_encode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(["mnist", "--out", str(out), "--shard-max-count", "100"])
    assert files_in(out) == []

    # with a complete older dataset in place, a failed run leaves that one intact
    monkeypatch.setattr(data_prep.mnist, "encode_png", encode)
    run(["mnist", "--out", str(out), "--per-class", "30"])
    before = {name: (out / name).read_bytes() for name in files_in(out)}
    calls.clear()
    monkeypatch.setattr(data_prep.mnist, "encode_png", failing_encode)
    with pytest.raises(RuntimeError):
        run(["mnist", "--out", str(out), "--shard-max-count", "100"])
    assert {name: (out / name).read_bytes() for name in files_in(out)} == before


def _bad_idx(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Build a broken source for ``case``; returns (extra CLI args, text the error must contain)."""
    src = tmp_path / "idx"
    write_idx_dir(src)
    images_file = src / IDX_NAMES["train"][0]
    labels_file = src / IDX_NAMES["train"][1]
    if case == "missing":
        (src / IDX_NAMES["test"][1]).unlink()
        return [], IDX_NAMES["test"][1]
    if case == "truncated":
        images_file.write_bytes(images_file.read_bytes()[:-100])
        return [], images_file.name
    if case == "truncated-header":
        labels_file.write_bytes(labels_file.read_bytes()[:5])
        return [], labels_file.name
    if case == "bad-gzip":
        images_file.unlink()
        Path(f"{images_file}.gz").write_bytes(b"not gzip")
        return [], images_file.name
    if case == "magic":
        images_file.write_bytes(labels_file.read_bytes())
        return [], "magic number"
    if case == "dims":
        images_file.write_bytes(idx_bytes(np.zeros((200, 32, 32), np.uint8)))
        return [], "32x32"
    if case == "count":
        labels_file.write_bytes(idx_bytes(np.zeros(150, np.uint8)))
        return [], "150 labels"
    if case == "digit":
        return ["--digits", "7-12"], "--digits"
    if case == "too-many":
        return ["--train-per-class", "21"], "--train-per-class"
    if case == "source":
        return ["--source", "ftp:somewhere"], "--source"
    raise AssertionError(case)


BAD_CASES = ["missing", "truncated", "truncated-header", "bad-gzip", "magic", "dims", "count", "digit",
             "too-many", "source"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_mnist_input_errors_and_writes_nothing(tmp_path, case):
    args, expected = _bad_idx(tmp_path, case)
    out = tmp_path / "out"
    source = [] if "--source" in args else ["--source", f"idx:{tmp_path / 'idx'}"]
    with pytest.raises(DataPrepError, match=expected.replace("-", r"\-")):
        run(["mnist", *source, "--out", str(out), *args])
    assert not out.exists()


def test_embedded_too_many_per_class(tmp_path):
    with pytest.raises(DataPrepError, match="500"):
        run(["mnist", "--out", str(tmp_path / "out"), "--train-per-class", "450", "--test-per-class", "100"])
    with pytest.raises(DataPrepError, match="'all' to both"):
        run(["mnist", "--out", str(tmp_path / "out"), "--per-class", "all"])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_error_exits_2_without_traceback(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "data_prep", "mnist", "--source", f"idx:{tmp_path}",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: missing IDX file") and "Traceback" not in proc.stderr
    assert not out.exists()


def test_out_that_is_a_file_is_one_error_line(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "data_prep", "mnist", "--out", str(existing)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --out {existing} is an existing file, not a directory: pass a directory path"
    assert existing.read_text() == "keep me"


def test_out_in_a_read_only_place_is_one_error_line():
    out = Path("/sys/vitssl-shards")  # sysfs refuses new directories, even to root
    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    proc = subprocess.run([sys.executable, "-m", "data_prep", "mnist", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {out}: cannot write there"), proc.stderr
    assert not out.exists()


def test_disk_error_while_writing_is_one_error_and_keeps_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_add = data_prep.writer._add_member

    def add_until_full(tar, name, data):
        if name.startswith("test-"):
            raise OSError(28, "No space left on device")
        real_add(tar, name, data)

    monkeypatch.setattr(data_prep.writer, "_add_member", add_until_full)
    with pytest.raises(DataPrepError, match="No space left on device.*nothing was kept"):
        run(["mnist", "--out", str(out), "--per-class", "10"])
    assert not out.exists()


def test_summary_command(tmp_path):
    out = tmp_path / "out"
    run(["mnist", "--out", str(out), "--per-class", "10"])
    text = run(["summary", str(out)])
    assert "train: 30 images in 1 shard(s) (0: 10, 1: 10, 2: 10)" in text
    with pytest.raises(DataPrepError, match="no readable manifest"):
        run(["summary", str(tmp_path / "nothing")])


def test_torchvision_source_reads_local_files(tmp_path):
    raw = tmp_path / "tv" / "MNIST" / "raw"
    arrays = write_idx_dir(raw)
    out = tmp_path / "out"
    run(["mnist", "--source", f"torchvision:{tmp_path / 'tv'}", "--digits", "0-9", "--per-class", "all",
         "--out", str(out)])
    rows = read_split(out, "test")
    assert len(rows) == 80
    r = int(rows[0]["meta"]["source_id"].split(":")[1])
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(rows[0]["png"]))), arrays["test"][0][r])


def test_torchvision_download_failure_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataPrepError, match="idx:<dir>"):
        run(["mnist", "--source", f"torchvision:{tmp_path / 'tv'}", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- Tiny ImageNet


@pytest.mark.parametrize("layout", ["zip", "folder", "parent"])
def test_tiny_imagenet_round_trip(tmp_path, layout):
    files = tiny_imagenet_files()
    if layout == "zip":
        source = write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", files)
    else:
        root = write_tiny_folder(tmp_path / "src", files)
        source = root if layout == "folder" else root.parent
    out = tmp_path / "out"
    run(["tiny-imagenet", "--source", str(source), "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "tiny-imagenet"
    assert manifest["classes"] == ["goldfish", "tabby", "bullfrog"]
    assert manifest["class_words"] == [TINY_WORDS[w] for w in ("n01", "n02", "n03")]
    assert manifest["splits"]["train"]["per_class"] == {"goldfish": 4, "tabby": 4, "bullfrog": 4}
    assert manifest["splits"]["test"]["per_class"] == {"goldfish": 2, "tabby": 2, "bullfrog": 2}
    assert ("sha256" in manifest["source"]) == (layout == "zip")
    for split in ("train", "test"):
        for row in read_split(out, split):
            assert row["jpg"] == files[row["meta"]["source_id"]]  # original bytes
            wnid = ["n01", "n02", "n03"][row["cls"]]
            assert wnid in row["meta"]["source_id"] or split == "test"
    images, labels, _ = load_split_tensors(out, "test")
    assert images.shape == (6, 3, 64, 64)  # the grayscale JPEG is decoded to 3 channels too
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_tiny_imagenet_per_class_subset(tmp_path):
    source = write_tiny_zip(tmp_path / "t.zip", tiny_imagenet_files())
    out = tmp_path / "out"
    run(["tiny-imagenet", "--source", str(source), "--out", str(out), "--per-class", "1"])
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert splits["train"]["count"] == 3 and splits["test"]["count"] == 3
    with pytest.raises(DataPrepError, match="--per-class"):
        run(["tiny-imagenet", "--source", str(source), "--out", str(out), "--per-class", "5"])


def test_tiny_imagenet_bad_inputs(tmp_path):
    out = tmp_path / "out"
    files = tiny_imagenet_files()
    files["train/n03/images/n03_2.JPEG"] = b"\xff\xd8 not really a jpeg"
    with pytest.raises(DataPrepError, match="n03_2.JPEG: unreadable JPEG"):
        run(["tiny-imagenet", "--source", str(write_tiny_zip(tmp_path / "a.zip", files)), "--out", str(out)])
    assert not out.exists()
    with pytest.raises(DataPrepError, match="does not have the Tiny ImageNet layout"):
        run(["tiny-imagenet", "--source", str(write_tiny_zip(tmp_path / "b.zip", {"x.txt": b""})),
             "--out", str(out)])
    files = tiny_imagenet_files()
    del files["val/val_annotations.txt"]
    with pytest.raises(DataPrepError, match="val_annotations.txt is missing"):
        run(["tiny-imagenet", "--source", str(write_tiny_zip(tmp_path / "c.zip", files)), "--out", str(out)])
    (tmp_path / "d.zip").write_bytes(b"PK no zip")
    with pytest.raises(DataPrepError, match="not a readable zip"):
        run(["tiny-imagenet", "--source", str(tmp_path / "d.zip"), "--out", str(out)])
    assert not out.exists()


# ---------------------------------------------------------------- full-size Fashion-MNIST, packaging


@pytest.mark.slow
def test_fashion_mnist_full_size(tmp_path):
    if not all((FASHION_MNIST_DIR / f"{n}.gz").is_file() for pair in IDX_NAMES.values() for n in pair):
        pytest.skip(f"Fashion-MNIST IDX files not in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "fashion"
    run(["mnist", "--source", f"idx:{FASHION_MNIST_DIR}", "--digits", "0-9", "--per-class", "all",
         "--out", str(out)])
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert splits["train"]["count"] == 60_000 and splits["test"]["count"] == 10_000
    assert set(splits["train"]["per_class"].values()) == {6000}
    assert [s["count"] for s in splits["train"]["shards"]] == [10_000] * 6
    with gzip.open(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        assert f.read(4) == (2049).to_bytes(4, "big")


@pytest.mark.slow
def test_import_ssl_is_the_standard_library():
    code = "import ssl, vitssl.data; assert hasattr(ssl, 'SSLContext'), ssl.__file__; print(ssl.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not proc.stdout.strip().startswith(str(REPO / "ssl"))
    # ssl/ must stay a plain folder: an ssl/__init__.py would shadow the standard library from the repo root
    assert not (REPO / "ssl" / "__init__.py").exists()


def test_unlabeled_rest_holds_every_digit_but_no_test_image(tmp_path):
    plain = make_mnist_shards(tmp_path / "plain")
    extra = make_mnist_shards(tmp_path / "extra", "--unlabeled-rest")
    before, after = json.loads((plain / "manifest.json").read_text()), json.loads((extra / "manifest.json").read_text())
    for split in ("train", "test"):  # the labelled protocol is unchanged by the option
        assert before["splits"][split]["shards"] == after["splits"][split]["shards"]
    unlabeled = after["splits"]["unlabeled"]
    assert unlabeled["count"] == 5000 - 300
    assert set(unlabeled["per_class"]) == {str(d) for d in range(10)}

    def source_ids(split):
        ids = set()
        for shard in after["splits"][split]["shards"]:
            with tarfile.open(extra / shard["name"]) as tar:
                ids |= {json.loads(tar.extractfile(m).read())["source_id"] for m in tar if m.name.endswith(".json")}
        return ids

    assert not source_ids("unlabeled") & source_ids("test")
    assert source_ids("train") <= source_ids("unlabeled")
    _, labels, _ = load_split_tensors(extra, "unlabeled")
    assert (labels == -1).all()


# ---------------------------------------------------------------- the study's protocol: val + large test


def _source_ids(out: Path, split: str) -> set[str]:
    return {r["meta"]["source_id"] for r in read_split(out, split)}


def test_val_and_large_test_leave_the_seeds_split_byte_identical(tmp_path):
    plain = make_mnist_shards(tmp_path / "plain")
    full = make_mnist_shards(tmp_path / "full", "--val-per-class", "100", "--large-test-rest", "--unlabeled-rest")
    before, after = (json.loads((d / "manifest.json").read_text())["splits"] for d in (plain, full))
    for split in ("train", "test"):
        assert before[split]["shards"] == after[split]["shards"]
    assert after["val"]["per_class"] == {"0": 100, "1": 100, "2": 100}
    # the embedded set has 500 digits a class: 100 train + 100 test + 100 val leave 200 for the large test
    assert after["test_large"]["per_class"] == {"0": 200, "1": 200, "2": 200}
    ids = {split: _source_ids(full, split) for split in ("train", "test", "val", "test_large", "unlabeled")}
    evaluation = ids["test"] | ids["val"] | ids["test_large"]
    assert len(evaluation) == 300 + 300 + 600  # pairwise disjoint
    assert not ids["train"] & evaluation
    assert not ids["unlabeled"] & evaluation  # label-free pretraining never sees an evaluation image
    assert ids["train"] <= ids["unlabeled"] and len(ids["unlabeled"]) == 5000 - 1200


def test_val_and_large_test_with_two_pools(tmp_path):
    write_idx_dir(tmp_path / "idx", train_per_class=20, test_per_class=8)
    out = make_mnist_shards(tmp_path / "out", "--source", f"idx:{tmp_path / 'idx'}", "--digits", "0-9",
                            "--train-per-class", "12", "--test-per-class", "3", "--val-per-class", "5",
                            "--large-test-rest", "--unlabeled-rest")
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert {s: splits[s]["count"] for s in splits} == {"train": 120, "test": 30, "val": 50, "test_large": 50,
                                                      "unlabeled": 200 - 50}
    ids = {split: _source_ids(out, split) for split in splits}
    assert all(i.startswith("train:") for i in ids["val"] | ids["unlabeled"])  # val comes from the training pool
    assert all(i.startswith("t10k:") for i in ids["test_large"])
    assert not ids["val"] & (ids["train"] | ids["unlabeled"]) and not ids["test"] & ids["test_large"]


def test_large_test_with_nothing_left_is_an_error(tmp_path):
    with pytest.raises(DataPrepError, match="test_large would be empty"):
        run(["mnist", "--out", str(tmp_path / "out"), "--train-per-class", "200", "--test-per-class", "200",
             "--val-per-class", "100", "--large-test-rest"])
    with pytest.raises(DataPrepError, match="--val-per-class"):
        run(["mnist", "--out", str(tmp_path / "out"), "--per-class", "200", "--val-per-class", "101"])
    assert not (tmp_path / "out").exists()
