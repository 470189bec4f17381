"""Every manifest, local or served, passes one schema: a missing key, a count as text, split totals
that disagree, or a shard name that leaves the manifest's base (a pipe: command, an absolute path,
..) is one error line naming the file and the key; a served shard with more samples than its
manifest is an error, never a short epoch."""
from __future__ import annotations

import copy
import json
import shutil

import pytest

from vitssl.data import DataError, load_manifest, make_eval_loader, make_train_loader, split_shards
from vitssl.data.manifest import check_manifest

from fixtures import make_mnist_shards
from http_shards import http_server


@pytest.fixture(scope="module")
def m3x100(tmp_path_factory):
    return make_mnist_shards(tmp_path_factory.mktemp("schema") / "d", "--shard-max-count", "100")


@pytest.fixture(scope="module")
def manifest(m3x100) -> dict:
    return json.loads((m3x100 / "manifest.json").read_text())


def _without(manifest: dict, path: list) -> dict:
    bad = copy.deepcopy(manifest)
    node = bad
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return bad


MISSING = [["splits"], ["splits", "train", "count"], ["splits", "train", "shards"],
           ["splits", "train", "shards", 0, "name"], ["splits", "train", "shards", 0, "count"],
           ["splits", "train", "shards", 0, "bytes"], ["splits", "train", "shards", 0, "sha256"]]


@pytest.mark.parametrize("path", MISSING, ids=lambda p: ".".join(map(str, p)))
def test_each_missing_key_is_one_line_naming_it(manifest, path):
    key = ".".join(map(str, path))
    with pytest.raises(DataError) as err:
        check_manifest(_without(manifest, path), "x/manifest.json", remote=False)
    assert str(err.value).startswith(f"x/manifest.json: {key}: missing (required)")
    assert "\n" not in str(err.value)


def test_wrong_types_and_totals(manifest):
    with pytest.raises(DataError, match=r"x: expected a JSON object with \"splits\", got a JSON list"):
        check_manifest([manifest], "x", remote=False)
    text = copy.deepcopy(manifest)
    text["splits"]["train"]["shards"][1]["count"] = "100"
    with pytest.raises(DataError, match=r"x: splits.train.shards.1.count: input should be a valid integer \(got '100'\)"):
        check_manifest(text, "x", remote=False)
    total = copy.deepcopy(manifest)
    total["splits"]["test"]["count"] = 250
    with pytest.raises(DataError, match=r"x: splits.test: count 250 differs from the sum over its shards \(300\)"):
        check_manifest(total, "x", remote=True)
    typo = copy.deepcopy(manifest)
    typo["splits"]["train"]["shards"][0]["sha"] = typo["splits"]["train"]["shards"][0].pop("sha256")
    with pytest.raises(DataError, match=r"x: splits.train.shards.0.sha256: missing \(required\) \(and 1 more\)"):
        check_manifest(typo, "x", remote=False)
    described = copy.deepcopy(manifest) | {"wnids": ["n01443537"]}  # a writer's own description: allowed
    assert check_manifest(described, "x", remote=False) is described


def test_the_optional_fields_of_a_folder_of_ones_own_images_validate(manifest):
    own = copy.deepcopy(manifest)
    own["splits"]["train"] |= {"labels": "cls", "classes": {"cat": 0, "dog": 1}, "channels": 3,
                               "width": {"min": 20, "median": 64, "max": 500},
                               "height": {"min": 18, "median": 60, "max": 400}, "kept_original": 7}
    own["splits"]["test"] |= {"labels": "none"}
    own |= {"skipped": 2, "options": {"channels": "majority"}, "source": {"kind": "class folders"}}
    assert check_manifest(own, "x", remote=False) is own
    own["splits"]["train"]["width"] = {"min": 20, "max": 500}
    with pytest.raises(DataError, match="splits.train.width.median: missing"):
        check_manifest(own, "x", remote=False)
    own["splits"]["train"]["width"]["median"] = 64
    own["splits"]["test"]["labels"] = "yes"
    with pytest.raises(DataError, match="splits.test.labels: input should be 'cls' or 'none'"):
        check_manifest(own, "x", remote=False)


def _copy(m3x100, tmp_path, edit) -> str:
    folder = tmp_path / "d"
    shutil.copytree(m3x100, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("name", ["pipe:touch {marker}; cat {folder}/train-000000.tar", "../d/train-000000.tar",
                                  "file://{folder}/train-000000.tar"])
def test_a_manifest_cannot_name_a_command_or_leave_its_folder(m3x100, tmp_path, name):
    marker = tmp_path / "MARKER"

    def edit(manifest):
        manifest["splits"]["train"]["shards"][0]["name"] = name.format(marker=marker, folder=m3x100)

    folder = _copy(m3x100, tmp_path, edit)
    expected = r"splits.train.shards.0.name: must be a relative path under the manifest's folder"
    with pytest.raises(DataError, match=f"^{folder}/manifest.json: {expected}"):
        load_manifest(folder)
    with http_server(tmp_path) as url:
        with pytest.raises(DataError, match=f"^{url}/d/manifest.json: {expected}"):
            make_train_loader(f"{url}/d", batch_size=8, rank=0, world_size=1)
    assert not marker.exists()


def test_a_served_manifest_cannot_point_at_other_hosts_or_absolute_paths(m3x100, tmp_path):
    def edit(manifest):
        manifest["splits"]["train"]["shards"][0]["name"] = f"{m3x100}/train-000000.tar"
        manifest["splits"]["test"]["shards"][0]["name"] = "http://elsewhere.invalid/test-000000.tar"

    folder = _copy(m3x100, tmp_path, edit)
    assert [s.url for s in split_shards(folder, "test", check_sha=False)][0].startswith("http://elsewhere")
    with http_server(tmp_path) as url:
        with pytest.raises(DataError, match=r"splits.train.shards.0.name: must be a relative path.*\(and 1 more\)"):
            split_shards(f"{url}/d", "test")


def test_a_served_shard_with_more_samples_than_its_manifest_is_an_error(m3x100, tmp_path):
    def edit(manifest):
        manifest["splits"]["test"]["shards"][1]["count"] = 90
        manifest["splits"]["test"]["count"] = 290

    _copy(m3x100, tmp_path, edit)
    with http_server(tmp_path) as url:
        with pytest.raises(DataError, match=r"test-000001.tar holds 100 samples, its manifest says 90"):
            list(make_eval_loader(f"{url}/d", "test", batch_size=64))
        loader = make_train_loader(f"{url}/d", "test", batch_size=8, rank=0, world_size=1, streams=1)
        with pytest.raises(DataError, match=r"test-000001.tar holds 100 samples, its manifest says 90"):
            list(loader)
