"""Tests for the retrieval datasets: identities:synthetic and a fabricated Market-1501 folder."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from compresslab.data import Dataset, list_datasets, load_dataset, retrieval
from compresslab.errors import UserError


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return load_dataset("identities:synthetic")


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------ identities:synthetic


def test_registered():
    assert "identities:synthetic" in list_datasets()
    assert "market1501:DIR" in list_datasets()


def test_synthetic_shapes_and_meta(synthetic):
    ds, info = synthetic, synthetic.meta["retrieval"]
    n_test = len(ds.y_test)
    assert ds.input_shape == (3, 16, 16)
    assert ds.num_classes == 500 == len(info["train_pids"])
    assert ds.y_train.min() >= 0 and ds.y_train.max() < ds.num_classes
    assert ds.y_val.max() < ds.num_classes
    assert info["cams_test"].shape == info["ids_test"].shape == (n_test,)
    assert info["cams_test"].dtype == info["ids_test"].dtype == torch.int64
    assert isinstance(info["n_query"], int) and 0 < info["n_query"] < n_test
    assert torch.equal(info["ids_test"], ds.y_test)
    assert any("test accuracy is meaningless" in n for n in ds.notes)


def test_synthetic_identities_disjoint_and_counts(synthetic):
    ds, info = synthetic, synthetic.meta["retrieval"]
    train_ids = set(info["train_pids"][torch.cat([ds.y_train, ds.y_val])].tolist())
    test_ids = set(info["ids_test"].tolist())
    assert len(train_ids) == 500 and len(test_ids) == 300
    assert not train_ids & test_ids
    n_query = info["n_query"]
    assert set(info["ids_test"][:n_query].tolist()) == test_ids  # every test identity is queried
    per_id = np.bincount(info["ids_test"].numpy())[sorted(test_ids)]
    assert per_id.min() >= 8 and per_id.max() <= 12


def test_synthetic_query_camera_and_gallery(synthetic):
    info = synthetic.meta["retrieval"]
    n_query = info["n_query"]
    ids, cams = info["ids_test"].numpy(), info["cams_test"].numpy()
    q_ids, q_cams, g_ids, g_cams = ids[:n_query], cams[:n_query], ids[n_query:], cams[n_query:]
    assert set(np.bincount(q_ids)[np.unique(q_ids)]) <= {1, 2}  # 1-2 queries per identity
    for p in np.unique(q_ids):
        (cam,) = set(q_cams[q_ids == p])  # all of an identity's queries come from one camera
        g = g_cams[g_ids == p]
        assert (g != cam).any()  # cross-camera matches to find
        assert (g == cam).any()  # and same-camera ones the protocol must exclude


def test_synthetic_deterministic_and_independent_of_split_seed(synthetic):
    again = load_dataset("identities:synthetic")
    assert torch.equal(again.x_test, synthetic.x_test) and torch.equal(again.x_train, synthetic.x_train)
    other = load_dataset("identities:synthetic", seed=3)
    assert torch.equal(other.meta["retrieval"]["ids_test"], synthetic.meta["retrieval"]["ids_test"])
    assert sorted(other.y_train.tolist() + other.y_val.tolist()) == sorted(
        synthetic.y_train.tolist() + synthetic.y_val.tolist())
    a = retrieval.synthetic_arrays()
    assert a is retrieval.synthetic_arrays() and not a["x_train"].flags.writeable


def test_synthetic_subset_keeps_whole_identities():
    ds = load_dataset("identities:synthetic@200")
    info = ds.meta["retrieval"]
    assert len(ds.y_train) + len(ds.y_val) == 200 and ds.num_classes == 500
    assert len(ds.y_test) <= 200
    n_query, ids = info["n_query"], info["ids_test"]
    assert set(ids[:n_query].tolist()) == set(ids.tolist())
    assert len(info["cams_test"]) == len(ds.y_test)


@pytest.mark.parametrize("name", ["identities:other", "identities:synthetic2", "identities"])
def test_identities_bad_spec(name):
    with pytest.raises(UserError) as e:
        load_dataset(name)
    assert "identities" in _one_line(e)


def test_to_keeps_meta(synthetic):
    assert synthetic.to("cpu") is synthetic
    moved = synthetic.to("meta")  # a different device: rebuilt, meta carried
    assert moved.meta["retrieval"]["n_query"] == synthetic.meta["retrieval"]["n_query"]
    assert moved.meta["retrieval"]["ids_test"] is synthetic.meta["retrieval"]["ids_test"]
    assert moved.meta is not synthetic.meta


def test_plain_datasets_have_empty_meta():
    assert load_dataset("digits").meta == {}


# --------------------------------------------------------------------- market1501

TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s1_000101_02.jpg",
         "0007_c1s2_000201_01.jpg", "0011_c5s1_000051_01.jpg"]
QUERY = ["0003_c1s1_000101_00.jpg", "0005_c4s2_000301_00.jpg"]
GALLERY = ["-1_c1s1_000401_03.jpg", "0000_c6s1_000001_01.jpg", "0003_c1s1_000202_01.jpg",
           "0003_c2s1_000111_02.jpg", "0005_c2s3_000077_01.jpg", "0005_c4s2_000411_02.jpg"]


def make_market(root, train=TRAIN, query=QUERY, gallery=GALLERY, write=True):
    """The Market-1501 layout; image k of a folder is a flat colour (k, 2k, 3k) * 10, 20x10."""
    for folder, names in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
        (root / folder).mkdir(parents=True)
        for k, name in enumerate(names):
            if write:
                from PIL import Image

                Image.new("RGB", (10, 20), (10 * k, 20 * k, 30 * k)).save(root / folder / name, quality=95)
            else:
                (root / folder / name).write_bytes(b"not a jpeg")
        (root / folder / "Thumbs.db").write_bytes(b"\x00")
        (root / folder / "readme.txt").write_text("not an image")
    return root


def test_market_loads(tmp_path):
    pytest.importorskip("PIL")
    root = make_market(tmp_path / "Market")
    ds = load_dataset(f"market1501:{root}", val_fraction=0.2)
    info = ds.meta["retrieval"]
    assert ds.input_shape == (3, 64, 32)
    assert ds.num_classes == 3
    assert info["train_pids"].tolist() == [2, 7, 11]
    assert sorted(torch.cat([ds.y_train, ds.y_val]).tolist()) == [0, 0, 1, 1, 2]
    assert info["n_query"] == 2 and len(ds.y_test) == 8
    assert info["ids_test"].tolist() == [3, 5, -1, 0, 3, 3, 5, 5]  # queries, then gallery by name
    assert info["cams_test"].tolist() == [1, 4, 1, 6, 1, 2, 2, 4]
    assert torch.equal(ds.y_test, info["ids_test"])


def test_market_pixels(tmp_path):
    pytest.importorskip("PIL")
    root = make_market(tmp_path / "Market")
    raw = retrieval.load_market1501(str(root), 0)
    assert raw.x_train.dtype == np.float32 and raw.x_train.min() >= 0 and raw.x_train.max() <= 1
    # query k=1 is the flat colour (10, 20, 30) / 255 (JPEG may be off by a few levels)
    assert np.allclose(raw.x_test[1].mean(axis=(1, 2)), np.array([10, 20, 30]) / 255, atol=4 / 255)
    assert raw.x_train.flags.writeable


def test_market_malformed_name(tmp_path):
    root = make_market(tmp_path / "M", gallery=[*GALLERY, "person_c1.jpg"], write=False)
    with pytest.raises(UserError) as e:
        load_dataset(f"market1501:{root}")
    assert "person_c1.jpg" in _one_line(e)


def test_market_missing_folder(tmp_path):
    root = make_market(tmp_path / "M", write=False)
    shutil.rmtree(root / "query")
    with pytest.raises(UserError) as e:
        load_dataset(f"market1501:{root}")
    assert "query/" in _one_line(e)
    with pytest.raises(UserError) as e:
        load_dataset(f"market1501:{tmp_path / 'nowhere'}")
    assert "no such directory" in _one_line(e)


def test_market_without_pillow(tmp_path, monkeypatch):
    root = make_market(tmp_path / "M2", write=False)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL -> ImportError
    with pytest.raises(UserError) as e:
        load_dataset(f"market1501:{root}")
    assert "pip install pillow" in _one_line(e)


def test_retrieval_labels_checked():
    a = retrieval.synthetic_arrays()
    raw = retrieval._retrieval_raw(a["x_train"][:4], [0, 1, 0, 1], [0, 1], a["x_test"][:4], [5, -2, 5, 5],
                                   [0, 1, 2, 3], 2)
    with pytest.raises(UserError, match="below -1"):
        retrieval.check(raw, "x")
