"""Bad-input campaign: hypothesis mutates valid study specs and CLI argument lists.

Every input must end in a valid run (exit 0) or a UserError (exit 2, one line on
stderr), never a traceback, and a rejected input must write nothing. Each test counts
the inputs it tried in ``CAMPAIGN`` (printed at the end of the session with ``-s``);
docs/reliability.md records the counts and the bugs the campaign found.
"""
import copy
import os
from datetime import timedelta

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compresslab.cli import main

CAMPAIGN = {"specs": 0, "spec_runs": 0, "cli": 0, "cli_runs": 0}
#: ``COMPRESSLAB_CAMPAIGN=N`` explores: N fresh random inputs per test on every run. Without
#: it (``make test``, CI) the campaign is derandomised: the same 120 inputs every time, no
#: example database, so CI never turns red by chance. Finds are pinned with ``@example``.
EXPLORE = "COMPRESSLAB_CAMPAIGN" in os.environ
EXAMPLES = int(os.environ.get("COMPRESSLAB_CAMPAIGN", "120"))
#: Per-input time limit: a valid input must not run away (e.g. epochs: 1e12 once did).
DEADLINE = timedelta(seconds=float(os.environ.get("COMPRESSLAB_CAMPAIGN_DEADLINE", "120")))
CAMPAIGN_SETTINGS = settings(max_examples=EXAMPLES, deadline=DEADLINE, derandomize=not EXPLORE,
                             database=settings.default.database if EXPLORE else None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BASE = {
    "name": "campaign",
    "data": "digits",
    "parent": {"name": "mlp", "options": {"widths": [16]}},
    "recipe": {"optimizer": "adam", "lr": 0.01, "epochs": 1, "batch_size": 256},
    "children": [
        {"name": "kd", "method": "distill", "student": {"name": "mlp", "options": {"widths": [8]}}},
        {"name": "pruned", "method": "prune", "amount": 0.5, "finetune_epochs": 0},
        {"name": "q", "method": "quantize", "scheme": "fake", "bits": 4},
    ],
    "controls": {"seeds": [1], "student_from_scratch": False},
    "latency": False,
}
CF_BASE = {"kind": "compression-functional", "name": "cf", "data": "digits", "seeds": [0, 1],
           "parent": {"name": "mlp", "options": {"widths": [16]}},
           "recipe": {"optimizer": "adam", "lr": 0.01, "epochs": 1, "batch_size": 256},
           "children": [{"name": "q", "method": "quantize", "scheme": "fake", "bits": 4, "source": None}],
           "student_from_scratch": False, "latency": False}
BAD_VALUES = [None, -1, 0, 1, 2, 17, 1e12, -0.5, 0.5, 3.7, True, "", "abc", "mnist:/nonexistent", [], [1, 2], {},
              {"x": 1}, "p_star", "ptq-static", "qat", "fake", "cnn1d", "lenet5", "resnet20", float("nan")]


def _paths(node, prefix=()):
    """Every (path, value) in a nested spec."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(root, path, value):
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _delete(root, path):
    node = root
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]


@st.composite
def mutated_spec(draw):
    spec = copy.deepcopy(draw(st.sampled_from([BASE, CF_BASE])))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(spec) if p]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "unknown-key"]))
        if action == "replace":
            _set(spec, path, copy.deepcopy(draw(st.sampled_from(BAD_VALUES))))  # never alias the pool
        elif action == "delete":
            _delete(spec, path)
        else:
            parent = spec
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict):
                parent[draw(st.sampled_from(["colour", "epochz", "seed_", "bitz"]))] = 1
        if not isinstance(spec, dict):
            break
    return spec


def _written(runs):
    """Files under the run store that a rejected input must not create."""
    return sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) if runs.exists() else []


def _check(code: int, err: str, runs, before: list[str]) -> None:
    assert code in (0, 2, 3), f"exit {code}: {err}"
    if code == 3:  # a valid spec whose step failed at run time (e.g. the loss went NaN): one line, recorded
        assert err.startswith("error: study incomplete") and err.count("\n") == 1, err
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert _written(runs) == before, "a rejected input wrote files"


# found by the 1,500-input exploration: an MLP parent without hidden layers has no feature
# points, so CKA failed after every step had trained; it is now skipped with a note
@example(spec={**CF_BASE, "parent": {"name": "mlp", "options": {"widths": []}}})
@CAMPAIGN_SETTINGS
@given(spec=mutated_spec())
def test_malformed_specs_are_rejected_in_one_line_or_run(spec, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("spec")
    path, runs = tmp / "spec.yaml", tmp / "runs"
    path.write_text(yaml.safe_dump(spec))
    code = main(["study", str(path), "--runs", str(runs), "--quiet"])
    _check(code, capsys.readouterr().err, runs, [])
    CAMPAIGN["specs"] += 1
    CAMPAIGN["spec_runs"] += code == 0
    CAMPAIGN["spec_incomplete"] = CAMPAIGN.get("spec_incomplete", 0) + (code == 3)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run store with a trained parent (digits) and a 3-class npz dataset + checkpoint."""
    from compresslab.api import train_model

    tmp = tmp_path_factory.mktemp("cli")
    runs = tmp / "runs"
    parent = train_model("mlp", "digits", options={"widths": [16]}, overrides={"epochs": 1}, runs=runs)["checkpoint"]
    rng = np.random.default_rng(0)
    three = tmp / "three.npz"
    np.savez(three, x_train=rng.normal(size=(60, 1, 8, 8)).astype("float32"), y_train=rng.integers(0, 3, 60),
             x_test=rng.normal(size=(30, 1, 8, 8)).astype("float32"), y_test=rng.integers(0, 3, 30))
    empty = tmp / "empty.npz"
    np.savez(empty, x_train=np.zeros((0, 1, 8, 8), "float32"), y_train=np.zeros(0, "int64"),
             x_test=np.zeros((0, 1, 8, 8), "float32"), y_test=np.zeros(0, "int64"))
    other = train_model("mlp", f"npz:{three}", options={"widths": [8]}, overrides={"epochs": 1},
                        runs=runs)["checkpoint"]
    return {"runs": runs, "parent": parent, "three": f"npz:{three}", "other": other, "empty": f"npz:{empty}",
            "tmp": tmp}


@st.composite
def command_line(draw):
    """One command line: a command, its positional arguments and a few options, some bad.
    ``{parent}``, ``{other}``, ``{three}``, ``{empty}``, ``{tmp}`` and ``{runs}`` stand for
    the module's store (so that examples can be pinned with ``@example``)."""
    s = {k: f"{{{k}}}" for k in ("parent", "other", "three", "empty", "tmp", "runs")}
    data = st.sampled_from(["digits", "mnist1d", "nope", "mnist:/nonexistent", s["three"], s["empty"], "npz:"])
    ckpt = st.sampled_from([s["parent"], s["other"], "/nonexistent", s["tmp"], s["runs"]])
    num = st.sampled_from(["-1", "0", "1", "2", "4", "8", "17", "0.5", "1.5", "abc", "", "1e9", "nan"])
    cmd = draw(st.sampled_from(["train", "info", "evaluate", "compare", "prune", "quantize", "distill", "export",
                                "doctor", "prunability"]))
    args = {
        "train": lambda: ["--model", draw(st.sampled_from(["mlp", "cnn1d", "lenet5", "nope", "os:system"])),
                          "--data", draw(data), "--epochs", draw(st.sampled_from(["0", "1", "-1", "x"])),
                          "-o", draw(st.sampled_from(["widths=[8]", "widths=[-3]", "width=abc", "bogus=1", "widths"]))],
        "info": lambda: draw(st.sampled_from([[draw(ckpt)], ["--model", "mlp", "--input-shape",
                                                             draw(st.sampled_from(["1x8x8", "0x8", "a", "1x8x8x8"]))]])),
        "evaluate": lambda: [draw(ckpt), "--data", draw(data)],
        "compare": lambda: [draw(ckpt), draw(ckpt), "--data", draw(data),
                            "--split", draw(st.sampled_from(["test", "val", "train", "x"]))],
        "prune": lambda: [draw(ckpt), "--data", draw(data), "--amount", draw(num), "--finetune-epochs",
                          draw(st.sampled_from(["0", "-2", "x"])),
                          "--method", draw(st.sampled_from(["global-l1", "random", "channel", "nope"]))],
        "quantize": lambda: [draw(ckpt), "--data", draw(data), "--bits", draw(num),
                             "--scheme", draw(st.sampled_from(["fake", "ptq-dynamic", "ptq-static", "int3"])),
                             *draw(st.sampled_from([[], ["--act-bits", draw(num)], ["--calib-batches", draw(num)]]))],
        "distill": lambda: [draw(ckpt), "--student", draw(st.sampled_from(["mlp", "nope"])), "--data", draw(data),
                            "--epochs", draw(st.sampled_from(["0", "1", "-1"])), "-o", "widths=[4]",
                            "--loss", draw(st.sampled_from(["kd=0.9,ce=0.1", "kd=x", "dance=1", "at=1"]))],
        "export": lambda: [draw(ckpt), "--onnx", draw(st.sampled_from([s["tmp"] + "/m.onnx", "/nonexistent/m.onnx",
                                                                         s["tmp"] + "/m.txt"])),
                           "--data", draw(data), "--no-latency"],
        "doctor": lambda: [draw(ckpt)],
        "prunability": lambda: [draw(ckpt), "--points", draw(num)],
    }[cmd]()
    return [cmd, *args]


# found in CI: the feature-point check of `at` ran after the step had taken its lock
@example(argv=["distill", "{parent}", "--student", "mlp", "--data", "{three}", "--epochs", "1", "-o", "widths=[4]",
               "--loss", "at=1"])
@CAMPAIGN_SETTINGS
@given(argv=command_line())
def test_malformed_command_lines_are_rejected_in_one_line_or_run(store, argv, capsys):
    argv = [a.format(**{k: str(v) for k, v in store.items()}) for a in argv]
    runs = store["runs"]
    if argv[0] in ("train", "prune", "quantize", "distill"):
        argv += ["--runs", str(runs), "--quiet"]
    before = _written(runs)
    code = main(argv)
    err = capsys.readouterr().err
    if argv[0] == "doctor":
        assert code in (0, 1, 2), err
        code = 2 if code == 2 else 0
    _check(code, err, runs, before)
    for leftover in store["tmp"].glob("m.*"):
        os.remove(leftover)
    CAMPAIGN["cli"] += 1
    CAMPAIGN["cli_runs"] += code == 0


def test_zz_campaign_counts(capsys):
    """Runs last in this file: report how many inputs the campaign tried."""
    with capsys.disabled():
        print(f"\nbad-input campaign: {CAMPAIGN}")
    assert CAMPAIGN["specs"] == 0 or CAMPAIGN["specs"] >= min(EXAMPLES, 100)


@pytest.mark.parametrize("path,value,needle", [
    (("recipe", "epochs"), 1e12, "epochs"),                      # accepted, then trained forever
    (("children", 1, "finetune_epochs"), 10**9, "finetune_epochs"),
    (("children", 2, "calib_batches"), 10**12, "calib_batches"),  # accepted, then ran out of memory
    (("controls", "seeds"), [-1], "seeds"),                      # accepted, then numpy raised a traceback
    (("seed",), -3, "seed"),
])
def test_regressions_found_by_the_campaign(capsys, tmp_path, path, value, needle):
    spec = copy.deepcopy(BASE)
    _set(spec, path, value)
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(spec))
    code = main(["study", str(f), "--runs", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_negative_seed_on_the_command_line_is_one_line(capsys, tmp_path):
    code = main(["train", "--model", "mlp", "--data", "digits", "--seed", "-1", "--runs", str(tmp_path / "r")])
    assert code == 2 and "--seed" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_model_too_large_to_allocate_is_one_line(capsys, tmp_path):
    spec = copy.deepcopy(CF_BASE)
    spec["parent"]["options"]["widths"] = [10**12]  # found by the campaign: a RuntimeError traceback from torch
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(spec))
    code = main(["study", str(f), "--runs", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "could not be built" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
