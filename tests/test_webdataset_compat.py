"""Shards are standard webdataset tars: a plain webdataset pipeline reads what data_prep wrote."""
import json

import numpy as np
import webdataset as wds

from vitssl.data import load_manifest, load_split_tensors


def test_plain_webdataset_reads_the_shards(mnist012):
    manifest = load_manifest(mnist012)
    urls = [str(mnist012 / s["name"]) for s in manifest["splits"]["train"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert len(samples) == manifest["splits"]["train"]["count"] == 300
    images, labels, indices = load_split_tensors(mnist012, "train")
    by_index = {int(i): (img, int(lab)) for img, lab, i in zip(images, labels, indices, strict=True)}
    for s in samples[:20]:
        meta = s["json"]
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
        image, label = by_index[meta["index"]]
        assert s["cls"] == label == meta["label"]
        np.testing.assert_allclose(s["png"].astype(np.float32) / 255, image[0].numpy())
