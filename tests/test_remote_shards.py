"""Shards the webdataset way: HTTP (a real ``python -m http.server``), ``file://``, ``pipe:`` commands,
brace lists without a manifest, ``data_prep index``, foreign tars (ShardWriter, PAX, GNU), and one
clear error for every bad source."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import pytest
import torch
import webdataset as wds

from data_prep.cli import run as data_prep
from data_prep.errors import DataPrepError
from vitssl.data import DataError, load_split_tensors, make_eval_loader, make_train_loader, split_shards

from fixtures import make_mnist_shards
from http_shards import http_server
from launching import free_port

TRAIN = [f"train-{i:06d}.tar" for i in range(3)]


@pytest.fixture(scope="module")
def m3x100(tmp_path_factory):
    """3 train and 3 test shards of 100."""
    return make_mnist_shards(tmp_path_factory.mktemp("m3x100") / "d", "--shard-max-count", "100")


@pytest.fixture(scope="module")
def served(m3x100):
    with http_server(m3x100.parent) as url:
        yield f"{url}/{m3x100.name}"


def indices(loader) -> list[list[int]]:
    return [b["index"].tolist() for b in loader]


def epoch(shards, world_size: int = 2, num_workers: int = 0, **kwargs) -> list[list[list[int]]]:
    return [indices(make_train_loader(shards, batch_size=8, rank=r, world_size=world_size, num_workers=num_workers,
                                      epoch=1, **kwargs)) for r in range(world_size)]


# ---------------------------------------------------------------- same batches from every kind of source


def test_http_base_url_gives_the_folders_batches(m3x100, served):
    # The automatic stream count differs (16 for local files, at most one per shard for remote ones):
    # the same count gives the same batches.
    assert make_train_loader(served, batch_size=8, rank=0, world_size=2).plan.streams == 2
    local = [list(make_train_loader(m3x100, batch_size=8, rank=r, world_size=2, num_workers=2, epoch=1, streams=2))
             for r in range(2)]
    remote = [list(make_train_loader(served, batch_size=8, rank=r, world_size=2, num_workers=2, epoch=1))
              for r in range(2)]
    for a_rank, b_rank in zip(local, remote, strict=True):
        assert len(a_rank) == len(b_rank) == 300 // 16
        for a, b in zip(a_rank, b_rank, strict=True):
            torch.testing.assert_close(a, b)
    for a, b in zip(load_split_tensors(m3x100, "test"), load_split_tensors(served, "test"), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spec", ["{served}/train-{{000000..000002}}.tar", "pipe:cat {folder}/train-{{000000..000002}}.tar",
                                  "file://{folder}"])
def test_url_lists_pipes_and_file_urls_give_the_folders_batches(m3x100, served, spec):
    spec = spec.format(served=served, folder=m3x100)
    assert epoch(spec, num_workers=1, streams=4) == epoch(m3x100, num_workers=1, streams=4)
    assert [s.count for s in split_shards(spec, "train")] == [100, 100, 100]


def test_index_writes_a_manifest_for_remote_shards(m3x100, served, tmp_path):
    data_prep(["index", f"{served}/train-{{000000..000002}}.tar", f"{served}/test-{{000000..000002}}.tar", "--out",
               str(tmp_path / "idx")])
    written = json.loads((tmp_path / "idx/manifest.json").read_text())
    original = json.loads((m3x100 / "manifest.json").read_text())
    for split in ("train", "test"):
        assert [(s["count"], s["bytes"], s["sha256"]) for s in written["splits"][split]["shards"]] == \
            [(s["count"], s["bytes"], s["sha256"]) for s in original["splits"][split]["shards"]]
    assert written["splits"]["train"]["shards"][0]["name"] == f"{served}/train-000000.tar"
    assert epoch(tmp_path / "idx") == epoch(served)
    assert "train: 300 samples in 3 shard(s)" in data_prep(["summary", str(tmp_path / "idx")])
    with pytest.raises(DataPrepError, match="cannot tell its split.*--split"):
        data_prep(["index", f"pipe:cat {m3x100}/train-000000.tar#x", "--out", str(tmp_path / "bad")])


# ---------------------------------------------------------------- shards written by other tools


def _members(folder, count: int) -> list[tuple[str, bytes, int]]:
    """(png bytes, label) of the first samples of a data_prep folder, read with tarfile."""
    with tarfile.open(folder / "train-000000.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar}
    return [(files[f"train-{i:07d}.png"], int(files[f"train-{i:07d}.cls"])) for i in range(count)]


@pytest.fixture(scope="module")
def foreign(m3x100, tmp_path_factory):
    """The first 40 samples as a ShardWriter shard, a `tar --format=pax` and a `--format=gnu` shard with
    member names longer than ustar's 100 characters."""
    root = tmp_path_factory.mktemp("foreign")
    samples = _members(m3x100, 40)
    (root / "sw").mkdir()
    with wds.ShardWriter(str(root / "sw/train-%06d.tar"), maxcount=1000, verbose=0) as sink:
        for i, (png, label) in enumerate(samples):
            sink.write({"__key__": f"digit{i:05d}", "png": png, "cls": str(label).encode()})
    tree = root / "tree" / ("deep_folder_name_" * 5)
    tree.mkdir(parents=True)
    for i, (png, label) in enumerate(samples):
        stem = f"sample_with_a_long_name_{i:05d}_" + "x" * 40
        (tree / f"{stem}.png").write_bytes(png)
        (tree / f"{stem}.cls").write_text(str(label))
    names = sorted(p.relative_to(root / "tree").as_posix() for p in tree.iterdir())
    assert len(names[0]) > 100
    for fmt in ("pax", "gnu"):
        (root / fmt).mkdir()
        subprocess.run(["tar", f"--format={fmt}", "-cf", str(root / fmt / "train-000000.tar"), "-C",
                        str(root / "tree"), *names], check=True)
    return root, samples


@pytest.mark.parametrize("kind", ["sw", "pax", "gnu"])
@pytest.mark.parametrize("via", ["local", "pipe"])
def test_shards_from_shardwriter_and_tar_with_pax_or_gnu_headers(foreign, kind, via):
    root, samples = foreign
    spec = f"{root / kind}/train-000000.tar" if via == "local" else f"pipe:cat {root / kind}/train-000000.tar"
    images, labels, index = load_split_tensors(spec, "train")
    assert index.tolist() == list(range(40))
    assert labels.tolist() == [label for _, label in samples]
    with tarfile.open(root / kind / "train-000000.tar") as tar:
        assert any(m.pax_headers for m in tar) or kind != "pax"
    first = torch.frombuffer(bytearray(samples[0][0]), dtype=torch.uint8)
    assert images.shape == (40, 1, 28, 28) and first.numel() > 0
    ranks = epoch(spec, world_size=2, num_workers=1)
    seen = [i for rank in ranks for b in rank for i in b]
    assert len(seen) == len(set(seen)) == 32


# ---------------------------------------------------------------- bad sources: one clear error


def _served_copy(m3x100, tmp_path):
    folder = tmp_path / "d"
    shutil.copytree(m3x100, folder)
    return folder


def test_missing_remote_shard_is_an_http_error_naming_it(m3x100, tmp_path):
    folder = _served_copy(m3x100, tmp_path)
    (folder / "train-000001.tar").unlink()
    with http_server(tmp_path) as url:
        loader = make_train_loader(f"{url}/d", batch_size=8, rank=0, world_size=1, shuffle=False, streams=1)
        with pytest.raises(DataError, match=r"train-000001.tar: curl exit 22: HTTP 404 \(no such file\)"):
            list(loader)


def test_unreachable_server_and_missing_manifest(m3x100, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/d"
    with pytest.raises(DataError, match=f"no manifest.json at {dead} .*curl exit 7: could not connect"):
        make_train_loader(dead, batch_size=8, rank=0, world_size=1)
    with http_server(tmp_path) as url, pytest.raises(DataError, match="no manifest.json at .*curl exit 22"):
        make_eval_loader(f"{url}/nothing", batch_size=8)


def test_manifest_that_is_not_json(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/manifest.json").write_text("<html>not found</html>")
    with http_server(tmp_path) as url, pytest.raises(DataError, match=r"d/manifest.json is not JSON"):
        make_train_loader(f"{url}/d", batch_size=8, rank=0, world_size=1)


@pytest.mark.parametrize("field, message", [("sha256", "is corrupt"), ("bytes", "has {size} bytes, its manifest says 1")])
def test_remote_shard_that_differs_from_the_manifest(m3x100, tmp_path, field, message):
    folder = _served_copy(m3x100, tmp_path)
    message = message.format(size=(folder / "train-000002.tar").stat().st_size)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][2][field] = "0" * 64 if field == "sha256" else 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with http_server(tmp_path) as url:
        for workers in (0, 2):
            loader = make_train_loader(f"{url}/d", batch_size=8, rank=0, world_size=1, num_workers=workers)
            with pytest.raises(DataError, match=f"train-000002.tar {message}") as err:
                list(loader)
            assert "\n" not in str(err.value)  # one line, also from a DataLoader worker
        assert len(list(make_train_loader(f"{url}/d", batch_size=8, rank=0, world_size=1, check_sha=False))) == 37


def test_pipe_that_fails_or_dies_mid_shard(m3x100):
    shard = m3x100 / "train-000000.tar"
    with pytest.raises(DataError, match=r"shard pipe:\*\*\* \(train-000000.tar\): the command exited with status 1"):
        split_shards("pipe:cat /no/such/train-000000.tar", "train")
    died = f"pipe:head -c 30000 {shard}; exit 3 # train-000000.tar"
    with pytest.raises(DataError, match="the command exited with status 3|not a complete tar stream"):
        split_shards(died, "train")
    truncated = f"pipe:head -c 30000 {shard} # train-000000.tar"
    with pytest.raises(DataError, match="not a complete tar stream"):
        split_shards(truncated, "train")
