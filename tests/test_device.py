"""Devices: --device resolution and its errors, the CUDA-style training path exercised on
the CPU (windowed NaN checks, collapse and out-of-memory errors), device-free
checkpoints, the runtime record, and the same checks on CUDA where a GPU exists."""
import copy
import json

import pytest
import torch
import yaml
from conftest import DEVICES
from torch import nn

from compresslab import device as devices
from compresslab.api import train_model
from compresslab.cli import main
from compresslab.data import load_dataset
from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.measure import latency
from compresslab.runs.checkpoint import load_checkpoint, read_model_json
from compresslab.runs.store import read_json
from compresslab.train import Recipe, StepContext, fit


def _data(n=96, classes=3, seed=0, constant=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 2, 6, 6) if constant else torch.randn(n, 2, 6, 6, generator=g)
    y = torch.arange(n) % classes if constant else (x.flatten(1)[:, :classes]).argmax(1)
    return Dataset("toy", x, y, x[:16], y[:16], x[:16], y[:16], num_classes=classes)


def _net(seed=0, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, classes))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# -- resolving a device ---------------------------------------------------------------------------


def test_auto_is_cuda_only_when_present(monkeypatch):
    monkeypatch.setattr(devices, "cuda_count", lambda: 0)
    assert devices.resolve("auto") == torch.device("cpu") == devices.resolve(None)
    monkeypatch.setattr(devices, "cuda_count", lambda: 2)
    assert devices.resolve("auto") == torch.device("cuda")
    assert devices.resolve("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("count, name, message", [
    (0, "cuda", "--device cuda: "),
    (1, "cuda:7", "--device cuda:7: this machine has 1 CUDA device (cuda:0)"),
    (2, "cuda:2", "this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
    (1, "tpu", "--device 'tpu': use auto"),
    (1, "cuda:x", "--device 'cuda:x': use auto"),
])
def test_devices_this_machine_lacks_are_one_line_errors(monkeypatch, count, name, message):
    monkeypatch.setattr(devices, "cuda_count", lambda: count)
    with pytest.raises(UserError) as err:
        devices.resolve(name)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gpus_per_step_must_exist(monkeypatch):
    monkeypatch.setattr(devices, "cuda_count", lambda: 1)
    devices.check_gpus_per_step(0.25)
    devices.check_gpus_per_step(1)
    with pytest.raises(UserError, match="this machine has 1 CUDA GPU; use at most 1"):
        devices.check_gpus_per_step(2)
    monkeypatch.setattr(devices, "cuda_count", lambda: 0)
    with pytest.raises(UserError, match="this machine has no CUDA GPU"):
        devices.check_gpus_per_step(0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_a_gpu_writes_nothing(tmp_path, capsys):
    code = main(["train", "--model", "mlp", "--data", "digits", "--device", "cuda", "--runs", str(tmp_path / "r")])
    assert code == 2 and capsys.readouterr().err.startswith("error: --device cuda: ")
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"parent": {"name": "mlp"}, "data": "digits", "device": "cuda"}))
    assert main(["study", str(spec), "--runs", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--device cuda" in capsys.readouterr().err and not (tmp_path / "r").exists()


# -- the training loop's device path, on the CPU -----------------------------------------------------


def test_windowed_loss_checks_train_the_same_weights():
    data, recipe = _data(), Recipe(epochs=2, batch_size=16, lr=0.05)
    a, b = _net(), _net()
    ra = fit(a, data, recipe, seed=3)
    events = []
    rb = fit(b, data, recipe, seed=3, check_every=4, callback=events.append)
    assert _same(a, b)  # reading the loss later changes nothing about training
    for ea, eb in zip(ra.history, rb.history):
        assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-12) and eb["acc"] == ea["acc"]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [4, 6, 4, 6]  # one event per window and at each epoch's end (6 steps an epoch)


def test_windowed_nan_check_names_the_first_bad_step():
    def bad(ctx: StepContext):
        return ctx.logits.sum() * (float("nan") if ctx.global_step == 3 else 0.0)

    for every in (1, 4):
        with pytest.raises(UserError) as err:
            fit(_net(), _data(), Recipe(epochs=1, batch_size=16), loss={"ce": 1.0, "bad": 1.0}, terms={"bad": bad},
                check_every=every)
        assert str(err.value).startswith("loss became nan at epoch 1, step 3 (global step 3)")


def test_a_collapsed_run_stops_with_one_line():
    data = _data(constant=True)  # every input the same: the model can only guess one class
    recipe = Recipe(epochs=5, batch_size=8, lr=1e-9, optimizer="sgd", weight_decay=0)  # 36 steps by epoch 3
    with pytest.raises(UserError) as err:
        fit(_net(), data, recipe)
    msg = str(err.value)
    assert msg.startswith("training collapsed: train accuracy 33.3% is at chance (33.3%) after 3 epochs")
    assert "\n" not in msg
    assert len(fit(_net(), data, recipe, health=False).history) == 5
    assert len(fit(_net(), _data(), Recipe(epochs=5, batch_size=32)).history) == 5  # a healthy run goes on


def test_the_collapse_check_waits_for_enough_steps():
    data = _data(constant=True)
    one_batch = Recipe(epochs=10, batch_size=len(data.y_train), lr=1e-9, optimizer="sgd", weight_decay=0)
    assert len(fit(_net(), data, one_batch).history) == 10  # 10 steps: too few to judge (a distilled set)
    with pytest.raises(UserError, match=r"after 30 epochs"):  # judged once HEALTH_STEPS steps have run
        fit(_net(), data, one_batch.model_copy(update={"epochs": 40}))


def test_out_of_memory_names_the_batch_size():
    class Hungry(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(72, 3)

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(UserError) as err:
        fit(Hungry(), _data(), Recipe(epochs=1, batch_size=32))
    assert "memory at batch size 32" in str(err.value) and "--batch-size 16" in str(err.value)


def test_dataset_moves_once_and_subsets_are_seeded():
    d = _data()
    assert d.to("cpu") is d and d.device == torch.device("cpu")
    a, b = load_dataset("digits@64", seed=1), load_dataset("digits@64", seed=1)
    assert a.sizes() == {"train": 58, "val": 6, "test": 64} and torch.equal(a.x_train, b.x_train)
    assert a.num_classes == 10 and "subset: 64 of" in a.notes[-1]


# -- on every device ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dev", DEVICES)
def test_a_step_trains_on_the_device_and_its_checkpoint_is_device_free(tmp_path, dev):
    r = train_model("cnn1d", "mnist1d", options={"width": 8, "hidden": 16}, overrides={"epochs": 1},
                    runs=tmp_path, device=dev)
    metrics = read_json(tmp_path / r["checkpoint"].split("/")[-1] / "metrics.json")
    assert metrics["runtime"]["device"].startswith(dev) and metrics["runtime"]["torch"] == torch.__version__
    assert metrics["runtime"]["precision"] == "fp32" and metrics["runtime"]["deterministic"] is False
    model, _ = load_checkpoint(r["checkpoint"])  # loads on the CPU whatever trained it
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert read_model_json(r["checkpoint"])["model"]["name"] == "cnn1d"
    again = train_model("cnn1d", "mnist1d", options={"width": 8, "hidden": 16}, overrides={"epochs": 1},
                        runs=tmp_path, device="cpu")
    assert again["reused"]  # the device is how a step runs, not what it is: reused across devices


@pytest.mark.parametrize("dev", DEVICES)
def test_deterministic_training_repeats_exactly(dev):
    data, recipe = _data(), Recipe(epochs=2, batch_size=16, augment="crop", crop_padding=1)
    runs = []
    for _ in range(2):
        model = _net().to(dev)
        with devices.using(devices.Runtime(dev, deterministic=True)):
            fit(model, data, recipe, seed=5)
        runs.append(model)
    assert _same(*runs)


@pytest.mark.cuda
def test_fast_precision_and_event_timing_on_cuda():
    data, model = _data(), _net().cuda()
    result = fit(model, data, Recipe(epochs=1, batch_size=16, precision="fast"))
    assert result.steps == 6 and model[0].weight.is_contiguous()  # channels_last undone at the end
    lat = latency(model, (2, 6, 6), batch_sizes=(1, 64), repeats=5)
    assert set(lat) == {"batch1", "batch64"} and all(v > 0 for v in lat.values())
    cpu = copy.deepcopy(model).cpu()
    x = data.x_test
    assert torch.allclose(model(x.cuda()).cpu(), cpu(x), atol=1e-4)


def test_a_study_records_where_it_ran(tmp_path, tiny_study, capsys):
    assert main(["study", str(tiny_study), "--runs", str(tmp_path / "r"), "--device", "cpu", "--deterministic",
                 "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["runtime"]["device"] == "cpu" and r["runtime"]["deterministic"] is True
    assert "device" not in r["spec"]  # how it ran is not part of what it is (the study's hash)


def test_sync_bn_and_gpu_ranks_are_checked_before_anything_runs(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--sync-bn synchronises BatchNorm across GPUs"):
        train_model("mlp", "digits", nproc=2, sync_bn=True, device="cpu", runs=tmp_path / "r")
    monkeypatch.setattr(devices, "cuda_count", lambda: 1)
    monkeypatch.setattr(devices, "resolve", lambda name=None: torch.device("cuda"))
    with pytest.raises(UserError, match="--nproc 2 on CUDA runs one process per GPU; this machine has 1"):
        train_model("mlp", "digits", nproc=2, runs=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.cuda
@pytest.mark.skipif(devices.cuda_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_two_gpus_with_sync_bn(tmp_path):
    r = train_model("cnn1d", "mnist1d", options={"width": 8, "hidden": 16}, overrides={"epochs": 1, "batch_size": 64},
                    nproc=2, sync_bn=True, device="cuda", runs=tmp_path)
    assert load_checkpoint(r["checkpoint"])[0] is not None and r["accuracy"]["test"] > 0.1


@pytest.mark.parametrize("dev", DEVICES)
def test_distillation_with_every_term_runs_on_the_device(dev):
    from compresslab.compress.distill import distill
    from compresslab.models import create_model

    data = load_dataset("mnist1d@256")
    torch.manual_seed(0)
    teacher = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=8, hidden=16)
    student = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40), width=4, hidden=8).to(dev)
    for augment in ("none", "crop"):  # cached teacher outputs, then the teacher live every step
        r = distill(copy.deepcopy(teacher), copy.deepcopy(student), data, Recipe(epochs=1, batch_size=64,
                    augment=augment), loss={"kd": 0.5, "ce": 0.5, "at": 100.0, "hint": 1.0})
        assert r.steps == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in r.history)


@pytest.mark.parametrize("dev", DEVICES)
def test_fake_quantisation_calibrates_and_trains_on_the_device(dev):
    from compresslab.compress import quantize as q

    data = _data()
    model = _net().to(dev)
    q.attach_fake_quant(model, 4, act_bits=8, observer="percentile", percentile=99.0)
    q.calibrate(model, q.calibration_batches(data.x_train.to(dev), 2, 16, seed=0))
    ranges = q.act_ranges(model)
    assert ranges and all(lo < hi for lo, hi in ranges.values())
    result = fit(model, data, Recipe(epochs=1, batch_size=16))  # QAT: straight-through gradients
    assert result.steps == 6 and all(p.device.type == dev for p in model.parameters())


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("method", ["global-l1", "layer-l1", "random"])
def test_pruning_masks_live_with_the_weights(dev, method):
    from compresslab.compress.prune import apply_masks, prune, sparsity_report

    model = _net().to(dev)
    masks = prune(model, 0.5, method=method, seed=1)
    fit(model, _data(), Recipe(epochs=1, batch_size=16), after_step=lambda m: apply_masks(m, masks))
    assert all(m.device.type == dev for m in masks.values())
    assert sparsity_report(model, masks)["global"] == pytest.approx(0.5, abs=0.02)
