"""Data-parallel training: ``fit(shard=...)`` in-process, and ``compresslab train --nproc 2``
through torchrun (2 CPU processes, a tiny cnn1d on mnist1d)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compresslab.cli import main
from compresslab.data.core import Dataset
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.runs.store import Step
from compresslab.steps import dataset
from compresslab.steps.distributed import HASH_ENV
from compresslab.train import Recipe, accuracy, fit

TINY = ["--model", "cnn1d", "--data", "mnist1d", "--option", "width=8", "--option", "depth=2",
        "--option", "hidden=16", "--quiet", "--json"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def toy(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return Dataset("toy", x, y, x[:0], y[:0], x[:0], y[:0], num_classes=3)


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(6, 3)


def test_shards_split_every_global_batch_and_drop_a_too_small_tail():
    data, recipe = toy(13), Recipe(epochs=1, batch_size=4, lr=0.1)  # batches of 4, 4, 4 and a tail of 1
    seen = {}
    for shard in (None, (0, 2), (1, 2)):
        idx = []

        def ce(ctx, idx=idx):
            idx.append(ctx.idx.tolist())
            return F.cross_entropy(ctx.logits, ctx.y)

        events = []
        result = fit(linear(), data, recipe, loss={"rec": 1.0}, terms={"rec": ce}, callback=events.append,
                     shard=shard)
        seen[shard] = idx
        assert result.steps == events[0]["steps_per_epoch"] == len(idx)
    assert len(seen[None]) == 4 and len(seen[0, 2]) == 3
    assert [a + b for a, b in zip(seen[0, 2], seen[1, 2])] == seen[None][:3]


def test_weighted_shard_gradients_average_to_the_whole_batch_gradient():
    """Slices of 3 and 2 examples: the mean of the two one-step SGD updates is the full-batch update."""
    data = toy(5)
    recipe = Recipe(epochs=1, batch_size=5, lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant")
    models = {shard: linear() for shard in (None, (0, 2), (1, 2))}
    for shard, m in models.items():
        fit(m, data, recipe, shard=shard)
    for full, a, b in zip(*(m.parameters() for m in models.values())):
        assert torch.allclose((a + b) / 2, full, atol=1e-6)


def test_train_nproc_2(capsys, tmp_path, monkeypatch):
    runs, hashes = tmp_path / "runs", tmp_path / "hashes"
    hashes.mkdir()
    monkeypatch.setenv(HASH_ENV, str(hashes))
    args = ("train", *TINY, "--epochs", 2, "--lr", 0.2, "--runs", runs, "--nproc", 2)
    code, out, err = run(capsys, *args)
    assert code == 0, err
    result = json.loads(out)
    assert result["reused"] is False

    # every rank ends with the same parameters
    digests = {p.name: p.read_text() for p in hashes.iterdir()}
    assert sorted(digests) == ["rank0.sha256", "rank1.sha256"] and len(set(digests.values())) == 1

    # rank 0 alone wrote one ordinary train step; nothing is left in the temp area
    steps = [p for p in runs.iterdir() if p.name.startswith("train-")]
    assert steps == [runs / result["checkpoint"].split("/")[-1]]
    assert not (runs / ".tmp").exists() or not any((runs / ".tmp").iterdir())
    spec = json.loads((steps[0] / "spec.json").read_text())["spec"]
    assert spec["nproc"] == 2
    assert Step("train", {k: v for k, v in spec.items() if k != "nproc"}).dirname != steps[0].name

    model, cfg = load_checkpoint(steps[0])
    assert cfg["model"]["name"] == "cnn1d"
    test = dataset("mnist1d", 0.1, 0).split("test")
    assert accuracy(model, *test) > 0.3
    metrics = json.loads((steps[0] / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["history"][1]["acc"] > 0.2

    code, out, err = run(capsys, *args)  # the same spec again: reused, no launch
    assert code == 0 and json.loads(out)["reused"] is True


def test_worker_user_error_reaches_the_cli(capsys, tmp_path):
    code, out, err = run(capsys, "train", *TINY, "--epochs", 1, "--lr", 1e30, "--runs", tmp_path / "r", "--nproc", 2)
    assert code == 2 and err.startswith("error: loss became") and err.count("\n") == 1, err
    assert not any(p.name.startswith("train-") for p in (tmp_path / "r").iterdir())


@pytest.mark.parametrize("extra", [("--nproc", 0), ("--nproc", -1), ("--nproc", 2, "--batch-size", 1)])
def test_bad_nproc_is_a_user_error(capsys, tmp_path, extra):
    code, out, err = run(capsys, "train", *TINY, "--epochs", 1, "--runs", tmp_path / "r", *extra)
    assert code == 2 and err.startswith("error: --nproc") and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists() or not any(p.name.startswith("train-") for p in (tmp_path / "r").iterdir())
