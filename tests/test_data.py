"""Tests for compresslab.data: loaders on real-format fixture files, splits, batching, augment."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from compresslab.data import (
    DATASETS,
    SPLITS,
    Dataset,
    augment,
    batches,
    list_datasets,
    load_dataset,
    loaders,
)
from compresslab.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def _cache_env(tmp_path_factory):
    """Keep the mnist1d cache out of the user's home for every test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPRESSLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# ----------------------------------------------------------------- fixtures


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An IDX file: big-endian magic, big-endian int32 dims, then the uint8 payload."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path, magic, array, gz=False):
    data = idx_bytes(magic, array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_mnist_dir(folder, n=60, n_test=12, h=28, w=28, gz=False, test=True):
    """MNIST-format dir; image i is the constant value i (so x == i/255 after loading)."""
    folder.mkdir(exist_ok=True)
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, h, w))
    labels = np.arange(n, dtype=np.uint8) % 10
    write_idx(folder / "train-images-idx3-ubyte", 0x803, images, gz)
    write_idx(folder / "train-labels-idx1-ubyte", 0x801, labels, gz)
    if test:
        t_images = np.full((n_test, h, w), 255, dtype=np.uint8)
        write_idx(folder / "t10k-images-idx3-ubyte", 0x803, t_images, gz)
        write_idx(folder / "t10k-labels-idx1-ubyte", 0x801, np.arange(n_test) % 10, gz)
    return folder


def cifar_batch(path, n, label_key=b"labels", classes=10, offset=0):
    """A CIFAR python batch as Python 2 wrote it: protocol 2, bytes keys.

    Pixel (c, i, j) of image k is ``(k + offset + 10 * c) % 256`` so the
    row-major 3x32x32 layout and the /255 scaling can both be checked.
    """
    k = (np.arange(n) + offset)[:, None, None, None]
    c = np.arange(3)[None, :, None, None]
    imgs = np.broadcast_to((k + 10 * c) % 256, (n, 3, 32, 32)).astype(np.uint8)
    d = {
        b"batch_label": b"fixture",
        b"data": imgs.reshape(n, 3072),
        label_key: [int(i % classes) for i in range(offset, offset + n)],
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }
    path.write_bytes(pickle.dumps(d, protocol=2))


def make_cifar10_dir(folder, per_batch=4, n_test=5):
    folder.mkdir(exist_ok=True)
    for i in range(1, 6):
        cifar_batch(folder / f"data_batch_{i}", per_batch, offset=(i - 1) * per_batch)
    cifar_batch(folder / "test_batch", n_test)
    return folder


def make_cifar100_dir(folder, n=30, n_test=6):
    folder.mkdir(exist_ok=True)
    cifar_batch(folder / "train", n, b"fine_labels", 100)
    cifar_batch(folder / "test", n_test, b"fine_labels", 100)
    return folder


def make_npz(path, x_train, y_train, x_test, y_test, **extra):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return path


# ---------------------------------------------------------------- registry


def test_registry_and_names():
    assert list_datasets() == [
        "mnist1d", "digits", "mnist:DIR", "cifar10:DIR", "cifar100:DIR", "npz:FILE", "identities:synthetic",
        "market1501:DIR", "bragg:synthetic", "distilled:DIR", "conll:DIR", "jsonl:FILE", "hf-disk:DIR",
        "imagefolder:DIR", "ner-synthetic",
    ]
    assert set(DATASETS) == {"mnist1d", "digits", "mnist", "cifar10", "cifar100", "npz", "identities", "market1501",
                             "bragg", "distilled", "conll", "jsonl", "hf-disk", "imagefolder", "ner-synthetic"}
    assert SPLITS == ("train", "val", "test")


def test_unknown_name_lists_known():
    with pytest.raises(UserError) as e:
        load_dataset("foo")
    msg = str(e.value)
    assert "unknown dataset 'foo'" in msg
    for name in list_datasets():
        assert name in msg


@pytest.mark.parametrize("name", ["mnist:", "mnist", "cifar10:", "npz:", "digits:x"])
def test_path_forms(name):
    with pytest.raises(UserError):
        load_dataset(name)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(tmp_path, fraction):
    with pytest.raises(UserError, match="val_fraction"):
        load_dataset("digits", val_fraction=fraction)


# ------------------------------------------------------------------- mnist


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_with_test_pair(tmp_path, gz):
    folder = make_mnist_dir(tmp_path / "m", gz=gz)
    raw = loaders.load_mnist(str(folder), 0)
    assert raw.x_train.shape == (60, 1, 28, 28) and raw.x_train.dtype == np.float32
    np.testing.assert_allclose(raw.x_train[:, 0, 3, 5], np.arange(60) / 255, rtol=1e-6)
    assert np.all(raw.x_test == 1.0)
    np.testing.assert_array_equal(raw.y_train, np.arange(60) % 10)
    assert raw.notes == []

    d = load_dataset(f"mnist:{folder}", val_fraction=0.1, seed=0)
    assert isinstance(d, Dataset)
    assert d.sizes() == {"train": 54, "val": 6, "test": 12}
    assert d.input_shape == (1, 28, 28) and d.in_channels == 1
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.num_classes == 10 and d.notes == []
    # standardised on train: mean 0, std 1 per channel
    assert abs(d.x_train.mean().item()) < 1e-5
    assert abs(d.x_train.std(unbiased=False).item() - 1) < 1e-4
    # train + val is a partition of the original train labels
    together = torch.cat([d.y_train, d.y_val]).sort().values
    assert torch.equal(together, torch.from_numpy(np.sort(np.arange(60) % 10)))


def test_mnist_any_size_from_header(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n=20, n_test=4, h=5, w=7)
    d = load_dataset(f"mnist:{folder}")
    assert d.input_shape == (1, 5, 7)


def test_mnist_carved_test_and_note(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n=60, test=False, gz=True)
    d = load_dataset(f"mnist:{folder}", val_fraction=0.1, seed=3)
    assert d.sizes() == {"train": 45, "val": 5, "test": 10}
    assert d.notes == [
        f"no t10k files in {folder}: test split (10 examples) carved from train with seed 3"
    ]
    # the carved test split is deterministic per seed
    again = load_dataset(f"mnist:{folder}", val_fraction=0.1, seed=3)
    assert torch.equal(d.x_test, again.x_test)


def test_mnist_missing_dir_and_files(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path / 'nope'}")
    folder = make_mnist_dir(tmp_path / "m", test=False)
    os.remove(folder / "train-labels-idx1-ubyte")
    with pytest.raises(UserError) as e:
        load_dataset(f"mnist:{folder}")
    msg = str(e.value)
    assert "missing train-labels-idx1-ubyte[.gz]" in msg and "t10k" in msg
    assert "\n" not in msg


def test_mnist_half_test_pair(tmp_path):
    folder = make_mnist_dir(tmp_path / "m")
    os.remove(folder / "t10k-labels-idx1-ubyte")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_dataset(f"mnist:{folder}")


def test_idx_bad_magic(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", test=False)
    labels = np.arange(60, dtype=np.uint8) % 10
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(0x803, labels))
    with pytest.raises(UserError, match="bad IDX magic.*train-labels|train-labels.*bad IDX magic"):
        load_dataset(f"mnist:{folder}")


@pytest.mark.parametrize("cut", [2, 10, 100])
def test_idx_truncated(tmp_path, cut):
    folder = make_mnist_dir(tmp_path / "m", test=False)
    path = folder / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(UserError, match="truncated") as e:
        load_dataset(f"mnist:{folder}")
    assert "train-images-idx3-ubyte" in str(e.value)


def test_idx_bad_gzip_and_count_mismatch(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", test=False, gz=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="gzip"):
        load_dataset(f"mnist:{folder}")
    write_idx(folder / "train-labels-idx1-ubyte", 0x801, np.zeros(59, np.uint8), gz=True)
    with pytest.raises(UserError, match="60 images but .* 59 labels"):
        load_dataset(f"mnist:{folder}")


def test_mnist_empty(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", 0x803, np.zeros((0, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", 0x801, np.zeros(0, np.uint8))
    with pytest.raises(UserError, match="no images"):
        load_dataset(f"mnist:{folder}")


# --------------------------------------------------------------------- splits


def test_determinism_and_seeds(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n=200)
    a = load_dataset(f"mnist:{folder}", seed=0)
    b = load_dataset(f"mnist:{folder}", seed=0)
    c = load_dataset(f"mnist:{folder}", seed=1)
    for s in SPLITS:
        assert torch.equal(a.split(s)[0], b.split(s)[0])
        assert torch.equal(a.split(s)[1], b.split(s)[1])
    # images are constant i/255, so the mean of an image identifies it
    ids = lambda d: set(torch.round(d.x_val.mean((1, 2, 3)), decimals=4).tolist())
    assert ids(a) != ids(c)
    assert a.sizes() == c.sizes() == {"train": 180, "val": 20, "test": 12}


def test_val_fraction_zero_and_minimum(tmp_path):
    folder = make_mnist_dir(tmp_path / "m", n=5, n_test=2)
    d = load_dataset(f"mnist:{folder}", val_fraction=0.0)
    assert d.sizes() == {"train": 5, "val": 0, "test": 2}
    assert d.x_val.shape == (0, 1, 28, 28) and d.y_val.dtype == torch.int64
    d = load_dataset(f"mnist:{folder}", val_fraction=0.01)
    assert d.sizes()["val"] == 1


# ---------------------------------------------------------------------- cifar


def test_cifar10(tmp_path):
    folder = make_cifar10_dir(tmp_path / "c10")
    raw = loaders.load_cifar10(str(folder), 0)
    assert raw.x_train.shape == (20, 3, 32, 32) and raw.x_test.shape == (5, 3, 32, 32)
    # image k, channel c is constant (k + 10c)/255: checks row-major CHW and scaling
    for k in (0, 7, 19):
        for c in range(3):
            np.testing.assert_allclose(raw.x_train[k, c], ((k + 10 * c) % 256) / 255, rtol=1e-6)
    np.testing.assert_array_equal(raw.y_train, np.arange(20) % 10)
    d = load_dataset(f"cifar10:{folder}", val_fraction=0.2)
    assert d.sizes() == {"train": 16, "val": 4, "test": 5}
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    # per-channel standardisation
    assert torch.allclose(d.x_train.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(d.x_train.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_cifar10_str_keys_and_extracted_parent(tmp_path):
    folder = make_cifar10_dir(tmp_path / "cifar-10-batches-py")
    d = pickle.loads((folder / "test_batch").read_bytes())
    (folder / "test_batch").write_bytes(
        pickle.dumps({k.decode(): v for k, v in d.items()}, protocol=2)
    )
    raw = loaders.load_cifar10(str(tmp_path), 0)  # parent of the extracted archive
    assert raw.x_test.shape == (5, 3, 32, 32)


def test_cifar_numpy1_global_names(tmp_path):
    """Pickles written by numpy < 2 (like the originals) name numpy.core.multiarray."""
    folder = make_cifar10_dir(tmp_path / "c10")
    path = folder / "test_batch"
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    x, y = loaders.read_cifar_batch(path, "labels")
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 1, 2, 3, 4]


def test_cifar100(tmp_path):
    folder = make_cifar100_dir(tmp_path / "c100")
    d = load_dataset(f"cifar100:{folder}", val_fraction=0.1)
    assert d.num_classes == 100
    assert d.sizes() == {"train": 27, "val": 3, "test": 6}
    assert d.input_shape == (3, 32, 32)


def test_cifar_missing_files(tmp_path):
    folder = make_cifar10_dir(tmp_path / "c10")
    os.remove(folder / "data_batch_3")
    with pytest.raises(UserError, match="missing data_batch_3.*expected data_batch_1"):
        load_dataset(f"cifar10:{folder}")
    with pytest.raises(UserError, match="expected train, test"):
        load_dataset(f"cifar100:{tmp_path / 'none'}")


def test_cifar_wrong_variant_and_garbage(tmp_path):
    folder = make_cifar10_dir(tmp_path / "c10")
    (folder / "train").write_bytes((folder / "data_batch_1").read_bytes())
    (folder / "test").write_bytes((folder / "test_batch").read_bytes())
    with pytest.raises(UserError, match="fine_labels"):
        load_dataset(f"cifar100:{folder}")
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="test_batch"):
        load_dataset(f"cifar10:{folder}")
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2)
    )
    with pytest.raises(UserError, match=r"\(N, 3072\)"):
        load_dataset(f"cifar10:{folder}")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    folder = make_cifar10_dir(tmp_path / "c10")
    marker = tmp_path / "pwned"
    payload = {b"data": _Evil(marker), b"labels": [0]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError) as e:
        load_dataset(f"cifar10:{folder}")
    msg = str(e.value)
    assert msg.startswith(f"refusing to unpickle {os.system.__module__}.system from ")
    assert "data_batch_2" in msg and "only arrays, lists and dicts" in msg
    assert not marker.exists()


def test_codecs_encode_only_latin1(tmp_path):
    import _codecs

    class Codec:
        def __reduce__(self):
            return (_codecs.encode, ("x", "rot13"))

    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Codec()}, protocol=2))
    with pytest.raises(UserError, match="test_batch"):
        loaders.read_cifar_batch(path, "labels")


# ------------------------------------------------------------------------ npz


def test_npz_shapes(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        (20, 40): (1, 40),
        (20, 6, 5): (1, 6, 5),
        (20, 3, 6, 5): (3, 6, 5),
    }
    for shape, expected in cases.items():
        f = make_npz(
            tmp_path / f"{len(shape)}.npz",
            rng.random(shape), np.arange(20) % 4, rng.random((7, *shape[1:])), np.arange(7) % 3,
        )
        d = load_dataset(f"npz:{f}", val_fraction=0.25)
        assert d.input_shape == expected
        assert d.sizes() == {"train": 15, "val": 5, "test": 7}
        assert d.num_classes == 4 and d.x_test.dtype == torch.float32
    # multi-channel 1-d signals need layout="NCL"
    f = make_npz(tmp_path / "ncl.npz", rng.random((20, 2, 9)), np.zeros(20, int),
                 rng.random((3, 2, 9)), np.zeros(3, int), layout="NCL")
    assert load_dataset(f"npz:{f}").input_shape == (2, 9)
    raw = loaders.load_npz(str(f), 0)
    assert raw.x_train.dtype == np.float32 and raw.y_train.dtype == np.int64


def test_npz_errors(tmp_path):
    f = tmp_path / "partial.npz"
    np.savez(f, x_train=np.zeros((3, 4)), y_train=np.zeros(3, int))
    with pytest.raises(UserError) as e:
        load_dataset(f"npz:{f}")
    assert "x_test" in str(e.value) and "y_test" in str(e.value)
    assert "missing" in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.npz"):
        load_dataset(f"npz:{bad}")
    obj = make_npz(tmp_path / "obj.npz", np.array([None] * 3, dtype=object), np.zeros(3, int),
                   np.zeros((1, 4)), np.zeros(1, int))
    with pytest.raises(UserError, match="obj.npz"):
        load_dataset(f"npz:{obj}")
    rows = make_npz(tmp_path / "rows.npz", np.zeros((3, 4)), np.zeros(2, int),
                    np.zeros((1, 4)), np.zeros(1, int))
    with pytest.raises(UserError, match="3 rows"):
        load_dataset(f"npz:{rows}")
    empty = make_npz(tmp_path / "empty.npz", np.zeros((0, 4)), np.zeros(0, int),
                     np.zeros((1, 4)), np.zeros(1, int))
    with pytest.raises(UserError, match="empty"):
        load_dataset(f"npz:{empty}")
    neg = make_npz(tmp_path / "neg.npz", np.zeros((3, 4)), np.array([0, -1, 2]),
                   np.zeros((1, 4)), np.zeros(1, int))
    with pytest.raises(UserError, match="negative"):
        load_dataset(f"npz:{neg}")


# ----------------------------------------------------------- digits, mnist1d


def test_digits():
    d = load_dataset("digits", seed=0)
    s = d.sizes()
    assert s["train"] + s["val"] + s["test"] == 1797 and s["test"] == 360
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    # stratified: every class 35 or 36 times in test
    counts = torch.bincount(d.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # test split does not depend on the seed (before standardisation)
    r0 = loaders.load_digits(None, 0)
    r1 = loaders.load_digits(None, 5)
    np.testing.assert_array_equal(r0.x_test, r1.x_test)
    assert r0.x_train.min() == 0.0 and r0.x_train.max() == 1.0


def test_mnist1d_cache(tmp_path, monkeypatch):
    import mnist1d.data

    monkeypatch.setenv("COMPRESSLAB_CACHE", str(tmp_path / "cache"))
    loaders.mnist1d_arrays.cache_clear()
    np.random.seed(123)
    first = load_dataset("mnist1d", seed=0)
    assert np.random.rand() == np.random.RandomState(123).rand()  # global RNG untouched
    files = list((tmp_path / "cache").glob("mnist1d-*.npz"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    loaders.mnist1d_arrays.cache_clear()
    second = load_dataset("mnist1d", seed=0)  # from the .npz
    third = load_dataset("mnist1d", seed=0)  # from the in-process cache
    for s in SPLITS:
        assert torch.equal(first.split(s)[0], second.split(s)[0])
        assert torch.equal(first.split(s)[0], third.split(s)[0])

    s = first.sizes()
    assert s["train"] + s["val"] == 4000 and s["val"] == 400 and s["test"] == 1000
    assert first.input_shape == (1, 40) and first.num_classes == 10
    assert first.x_train.dtype == torch.float32 and first.y_train.dtype == torch.int64


# -------------------------------------------------------------- batches, augment


def test_batches_cover_every_index_once():
    x = torch.arange(23).float()[:, None]
    y = torch.arange(23)
    seen = []
    for idx, xb, yb in batches(x, y, 5, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(yb, idx) and torch.equal(xb[:, 0], idx.float())
        seen.append(idx)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == list(range(23))
    assert not torch.equal(seen, torch.arange(23))  # actually shuffled
    sizes = [len(b[0]) for b in batches(x, y, 5)]
    assert sizes == [5, 5, 5, 5, 3]
    assert [len(b[0]) for b in batches(x, y, 5, drop_last=True)] == [5, 5, 5, 5]
    assert list(batches(x, y, 30, drop_last=True)) == []


def test_batches_seeded():
    x, y = torch.randn(50, 2), torch.arange(50)
    order = lambda s: torch.cat(
        [i for i, _, _ in batches(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(s))]
    )
    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))
    unshuffled = torch.cat([i for i, _, _ in batches(x, y, 8)])
    assert torch.equal(unshuffled, torch.arange(50))


def _windows_2d(x, p):
    """All (2p+1)^2 shifted windows of the zero-padded x, shape (n, K, C, H, W)."""
    H, W = x.shape[2:]
    padded = torch.nn.functional.pad(x, [p] * 4)
    return torch.stack(
        [padded[:, :, i : i + H, j : j + W] for i in range(2 * p + 1) for j in range(2 * p + 1)], 1
    )


def test_augment_crop_2d():
    x = torch.randn(16, 3, 6, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x), x)
    out = augment(x, crop_padding=2, generator=g)
    assert out.shape == x.shape
    wins = _windows_2d(x, 2)
    match = (wins == out[:, None]).flatten(2).all(-1)  # (n, K)
    assert match.any(1).all()
    # offsets actually vary across examples (not all the centre window)
    centre = 2 * 5 + 2
    assert not match[:, centre].all()
    # seeded reproducibility
    again = augment(x, crop_padding=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_augment_crop_1d():
    x = torch.randn(10, 2, 12)
    out = augment(x, crop_padding=3, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, [3, 3])
    wins = torch.stack([padded[:, :, i : i + 12] for i in range(7)], 1)
    assert (wins == out[:, None]).flatten(2).all(-1).any(1).all()


def test_augment_flip():
    x = torch.randn(64, 2, 4, 4)
    out = augment(x, flip=True, generator=torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()
    with pytest.raises(ValueError):
        augment(torch.randn(4, 1, 8), flip=True)
