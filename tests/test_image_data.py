"""``imagefolder:DIR`` (and ``hf-disk:`` images): layouts, resize/crop, unreadable files,
and the streamed training split (a DataLoader with workers) against the in-memory one."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from compresslab.cli import main
from compresslab.data import _standardise, load_dataset
from compresslab.data.core import batches, random_resized_crop, resized_crop
from compresslab.data.images import to_array
from compresslab.data.stream import LazyImages, loader_batches
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.train import Recipe, fit


def make_folder(root, splits=(("train", 10), ("test", 3)), classes=("cat", "dog"), side=(12, 10), seed=0):
    """Random RGB PNGs: ROOT/SPLIT/CLASS/i.png (split "" for ROOT/CLASS/i.png)."""
    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c in classes:
            d = root / split / c if split else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (side[1], side[0], 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_resize_and_centre_crop_by_hand():
    # 6 wide, 4 high: the shorter side is already 4, so no resampling, and the centre crop
    # keeps columns 1..4
    a = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    out = to_array(Image.fromarray(a, mode="L"), 4, channels=1)
    assert out.shape == (1, 4, 4) and out.dtype == np.uint8
    assert np.array_equal(out[0], a[:, 1:5])
    rgb = to_array(Image.fromarray(a, mode="L"), 4, channels=3)  # L -> RGB repeats the channel
    assert rgb.shape == (3, 4, 4) and all(np.array_equal(rgb[c], a[:, 1:5]) for c in range(3))
    big = to_array(Image.fromarray(np.zeros((20, 40, 3), np.uint8)), 8)  # shorter side 20 -> 8, width 16 -> crop 8
    assert big.shape == (3, 8, 8)


def test_layout_bad_image_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "README.txt").write_text("ignored: not an image extension")
    ds = load_dataset(f"imagefolder:{root}?size=8", val_fraction=0.1)
    assert ds.sizes() == {"train": 18, "val": 2, "test": 6}  # 20 readable train images, 2 carved for val
    assert ds.num_classes == 2 and ds.meta["classes"] == ["cat", "dog"] and ds.input_shape == (3, 8, 8)
    assert ds.notes == ["skipped 2 unreadable images: train/cat/broken.png, train/dog/empty.jpg"]
    # standardised per channel with the training split's statistics
    assert torch.allclose(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(ds.x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    # labels follow the sorted class folders
    assert sorted(ds.y_test.tolist()) == [0, 0, 0, 1, 1, 1]


def test_bad_fail_through_the_cli_names_the_file(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    runs = tmp_path / "runs"
    code = main(["train", "-m", "mlp", "--data", f"imagefolder:{root}?bad=fail&size=8", "--epochs", "1",
                 "--runs", str(runs), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "unreadable image train/cat/broken.png" in err and "bad=skip" in err
    assert not runs.exists() or not any(p.name.startswith("train-") for p in runs.iterdir())


def test_flat_layout_grayscale_and_carved_test(tmp_path):
    root = make_folder(tmp_path / "flat", splits=(("", 10),), classes=("a", "b", "c"))
    ds = load_dataset(f"imagefolder:{root}?channels=1&size=6", val_fraction=0.2)
    assert ds.input_shape == (1, 6, 6) and ds.num_classes == 3
    assert ds.sizes() == {"train": 19, "val": 5, "test": 6}  # 30 images: a fifth to test, 0.2 of 24 to val
    assert ds.notes == [f"no test split in imagefolder:{root}: test split (6 images) carved from train with seed 0"]


def test_val_folder_is_the_validation_split(tmp_path):
    root = make_folder(tmp_path / "imgs", splits=(("train", 4), ("val", 2), ("test", 1)))
    ds = load_dataset(f"imagefolder:{root}?size=8", val_fraction=0.5)
    assert ds.sizes() == {"train": 8, "val": 4, "test": 2}  # nothing carved: val/ is the validation split


@pytest.mark.parametrize("name, words", [
    ("imagefolder:{root}?sizes=8", "unknown option 'sizes'; imagefolder accepts size, channels, bad, stream, workers"),
    ("imagefolder:{root}?size=8&bad=maybe", "bad='maybe' must be skip or fail"),
    ("imagefolder:{root}?channels=2", "channels=2 must be 1 or 3"),
    ("imagefolder:{root}?size", "is not key=value"),
    ("imagefolder:{root}/nope", "no such directory"),
])
def test_option_errors(tmp_path, name, words):
    root = make_folder(tmp_path / "imgs", splits=(("train", 2),))
    with pytest.raises(UserError) as e:
        load_dataset(name.format(root=root))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_class_folders_must_match(tmp_path):
    root = make_folder(tmp_path / "imgs", splits=(("train", 3),))
    make_folder(root, splits=(("test", 1),), classes=("cat", "cow"))
    with pytest.raises(UserError, match="class folder.*cow"):
        load_dataset(f"imagefolder:{root}")


def test_hf_disk_images_in_memory_and_streamed(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)) for _ in range(10)]
    rows = [*imgs[:3], {"bytes": b"not an image", "path": None}, *imgs[3:]]  # row 3 is corrupt
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    datasets.Dataset.from_dict({"img": rows, "label": [i % 2 for i in range(11)]},
                               features=features).save_to_disk(str(tmp_path / "hf"))
    name = f"hf-disk:{tmp_path / 'hf'}"
    ds = load_dataset(f"{name}?size=8", val_fraction=0.2)
    assert ds.sizes() == {"train": 6, "val": 2, "test": 2} and ds.input_shape == (3, 8, 8)
    assert ds.meta["classes"] == ["x", "y"] and ds.num_classes == 2
    assert ds.notes == ["skipped 1 unreadable image: dataset row 3",
                        f"no test split in {name}: test split (2 images) carved from train with seed 0"]
    # imagefolder's preprocessing: the standardised train split of the readable rows
    assert torch.allclose(ds.x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    lazy = load_dataset(f"{name}?size=8&stream=1&workers=1", val_fraction=0.2)
    assert isinstance(lazy.x_train, LazyImages) and torch.equal(lazy.y_train, ds.y_train)
    assert torch.allclose(lazy.x_train[:], ds.x_train, atol=1e-5)
    with pytest.raises(UserError, match="unreadable image dataset row 3"):
        load_dataset(f"{name}?bad=fail")


# ----------------------------------------------------------------------------- streaming


def test_streamed_split_matches_in_memory(tmp_path):
    root = make_folder(tmp_path / "imgs", splits=(("train", 12),), side=(9, 9))
    (root / "train" / "cat" / "broken.png").write_bytes(b"nope")
    mem = load_dataset(f"imagefolder:{root}?size=8", val_fraction=0.25, seed=3)
    lazy = load_dataset(f"imagefolder:{root}?size=8&stream=1&workers=2", val_fraction=0.25, seed=3)
    assert isinstance(lazy.x_train, LazyImages) and lazy.x_train.workers == 2
    assert lazy.sizes() == mem.sizes() and lazy.input_shape == mem.input_shape == (3, 8, 8)
    assert lazy.x_train.shape == mem.x_train.shape and lazy.x_train.dim() == 4
    assert lazy.notes[0] == mem.notes[0] == "skipped 1 unreadable image: train/cat/broken.png"
    assert "streams from disk: 14 images decoded by 2 DataLoader worker(s)" in lazy.notes[-1]
    assert torch.equal(lazy.y_train, mem.y_train) and torch.equal(lazy.y_test, mem.y_test)
    # statistics from exact integer sums vs float32 reductions: equal to rounding
    assert torch.allclose(lazy.x_train[:], mem.x_train, atol=1e-5)
    assert torch.allclose(lazy.x_val, mem.x_val, atol=1e-5) and torch.allclose(lazy.x_test, mem.x_test, atol=1e-5)
    assert lazy.to("cpu") is lazy or lazy.to("cpu").x_train is lazy.x_train


def test_loader_batches_follow_the_in_memory_order(tmp_path):
    root = make_folder(tmp_path / "imgs", splits=(("train", 9),), side=(8, 8))
    lazy = load_dataset(f"imagefolder:{root}?size=8&stream=1&workers=2", val_fraction=0.0)
    x = lazy.x_train[:]
    got = list(loader_batches(lazy.x_train, lazy.y_train, 4, "cpu", generator=torch.Generator().manual_seed(5)))
    want = list(batches(x, lazy.y_train, 4, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert [len(b[0]) for b in got] == [4, 4, 4, 2]
    for (i, xb, yb), (j, xw, yw) in zip(got, want, strict=True):
        assert torch.equal(i, j) and torch.equal(xb, xw) and torch.equal(yb, yw)


def test_streamed_training_gives_the_same_weights(tmp_path):
    """With the in-memory split's statistics, a streamed run of a small CNN (2 DataLoader
    workers, crop-flip augmentation) ends with bit-identical weights, BatchNorm statistics and
    history: same order, same pixels."""
    root = make_folder(tmp_path / "imgs", splits=(("train", 16),), side=(10, 8))
    mem = load_dataset(f"imagefolder:{root}?size=8", val_fraction=0.1)
    lazy = load_dataset(f"imagefolder:{root}?size=8&stream=1&workers=2", val_fraction=0.1)
    scaled = lazy.x_train.standardised(None, None)[:]  # [0, 1] pixels of the kept files, in order
    mean = scaled.mean(dim=(0, 2, 3), keepdim=True)  # what load_dataset's _standardise computes
    std = scaled.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    assert torch.equal(_standardise(scaled)[0], mem.x_train)
    lazy.x_train = lazy.x_train.standardised(mean, std)
    recipe = Recipe(optimizer="sgd", lr=0.05, epochs=2, batch_size=8, augment="crop-flip", crop_padding=1)
    runs = []
    for data in (mem, lazy):
        torch.manual_seed(0)
        model = create_model("convnet", num_classes=2, in_channels=3, input_shape=(3, 8, 8), width=4, depth=2,
                             norm="batch")
        result = fit(model, data, recipe, seed=7, health=False)
        runs.append((model.state_dict(), result.history))
    (a, ha), (b, hb) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_streamed_training_through_the_cli(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", splits=(("train", 6), ("test", 2)), side=(8, 8))
    code = main(["train", "-m", "mlp", "--data", f"imagefolder:{root}?stream=1&workers=1&size=8", "--epochs", "1",
                 "--runs", str(tmp_path / "runs"), "--quiet", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads((tmp_path / "runs" / json.loads(out)["checkpoint"] / "metrics.json").read_text())
    assert len(metrics["history"]) == 1 and set(metrics["accuracy"]) >= {"val", "test"}
    # 11 streamed training images (12 minus 1 carved for val): accuracy is a multiple of 1/11
    assert round(metrics["history"][0]["acc"] * 11, 6) == round(metrics["history"][0]["acc"] * 11)


# --------------------------------------------------------------- random resized crop


def test_resized_crop_by_hand():
    # a horizontal ramp x[..., j] = j: bilinear sampling of a linear function is exact, so the
    # left half (cx=-0.5, w=0.5) resized to 8 columns samples input column 0.5 j - 0.25,
    # clamped to the edge (border)
    x = torch.arange(8.0).expand(2, 3, 6, 8).contiguous()
    boxes = torch.tensor([[-0.5, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]])
    out = resized_crop(x, boxes)
    want = (0.5 * torch.arange(8.0) - 0.25).clamp(min=0)
    assert torch.allclose(out[0], want.expand(3, 6, 8), atol=1e-5)
    assert torch.allclose(out[1], x[1], atol=1e-6)  # the whole image: unchanged


def test_random_resized_crop_is_seeded_and_keeps_shape():
    x = torch.rand(5, 3, 8, 8)
    a = random_resized_crop(x, generator=torch.Generator().manual_seed(1))
    b = random_resized_crop(x, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    same = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(same, x, atol=1e-6)  # a full-image box
