"""The CLI: JSON keys, and every user error reaching exit code 2 with one line."""
import json

import pytest

from compresslab.cli import main

COMPARE_KEYS = {"agreement", "disagreement", "kappa", "js_divergence", "activation_distance", "output_cosine",
                "kl_ab", "kl_ba", "accuracy_a", "accuracy_b"}


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *args) -> str:
    code, out, err = run(capsys, *args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _train(capsys, runs, *extra):
    code, out, err = run(capsys, "train", "--model", "cnn1d", "--data", "mnist1d", "--epochs", 1, "--runs", runs,
                         "--option", "width=8", "--option", "depth=2", "--option", "hidden=16", "--quiet",
                         "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_train_info_evaluate_compare(capsys, tmp_path):
    runs = tmp_path / "runs"
    a = _train(capsys, runs)
    assert a["reused"] is False and 0.0 <= a["accuracy"]["test"] <= 1.0
    assert _train(capsys, runs)["reused"] is True  # same spec: the store reuses the step
    b = _train(capsys, runs, "--seed", 1)
    assert b["checkpoint"] != a["checkpoint"]

    code, out, _ = run(capsys, "info", a["checkpoint"], "--json")
    info = json.loads(out)
    assert code == 0 and {"params", "nonzero_params", "macs", "bops", "bytes"} <= info.keys()
    assert info["params"] == info["nonzero_params"] > 0 and info["bytes"] == 4 * info["params"]
    code, out, _ = run(capsys, "info", a["checkpoint"], "--json", "--bits", 8, "--latency")
    info8 = json.loads(out)
    assert info8["bytes"] == info["params"] and info8["bops"] < info["bops"]
    assert info8["latency_ms"]["batch1"] > 0 and info8["latency_ms"]["batch256"] > 0

    code, out, _ = run(capsys, "evaluate", a["checkpoint"], "--data", "mnist1d", "--json")
    ev = json.loads(out)
    assert ev["splits"]["test"]["accuracy"] == pytest.approx(a["accuracy"]["test"])

    code, out, _ = run(capsys, "compare", a["checkpoint"], a["checkpoint"], "--data", "mnist1d", "--json")
    same = json.loads(out)
    assert set(same) == COMPARE_KEYS
    assert same["disagreement"] == 0 and same["kappa"] == 1 and same["js_divergence"] == 0
    assert same["output_cosine"] == pytest.approx(1.0)
    code, out, _ = run(capsys, "compare", a["checkpoint"], b["checkpoint"], "--data", "mnist1d", "--json")
    diff = json.loads(out)
    assert diff["disagreement"] > 0 and diff["js_divergence"] > 0


def test_info_of_a_fresh_model_matches_known_counts(capsys):
    code, out, _ = run(capsys, "info", "--model", "lenet5", "--input-shape", "1x28x28", "--json")
    assert code == 0 and json.loads(out)["params"] == 61706
    code, out, _ = run(capsys, "info", "--model", "wrn-40-2", "--input-shape", "3x32x32", "--json")
    assert json.loads(out)["params"] == 2243546


def test_unknown_model_lists_known(capsys, tmp_path):
    err = user_error(capsys, "train", "--model", "nope", "--data", "mnist1d", "--runs", tmp_path / "r")
    assert "nope" in err and "cnn1d" in err and "lenet5" in err
    assert not (tmp_path / "r").exists() or not any(p.name.startswith("train-") for p in (tmp_path / "r").iterdir())


def test_unknown_dataset_lists_known(capsys, tmp_path):
    err = user_error(capsys, "train", "--model", "cnn1d", "--data", "imagenet", "--runs", tmp_path / "r")
    assert "imagenet" in err and "mnist1d" in err and "cifar10:DIR" in err


def test_missing_paths(capsys, tmp_path):
    assert "not found" in user_error(capsys, "evaluate", tmp_path / "nope", "--data", "mnist1d")
    assert "not found" in user_error(capsys, "study", tmp_path / "nope.yaml", "--runs", tmp_path / "r")
    err = user_error(capsys, "train", "--model", "cnn1d", "--data", f"mnist:{tmp_path / 'nodir'}")
    assert "train-images-idx3-ubyte" in err


def test_malformed_yaml_gives_the_line(capsys, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nparent:\n  name: cnn1d\n   options: {width: 8}\n")
    err = user_error(capsys, "study", spec, "--runs", tmp_path / "r")
    assert "line 4" in err
    assert not (tmp_path / "r").exists()


def test_invalid_spec_names_the_field(capsys, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("parent: {name: cnn1d}\nchildren:\n  - {name: p, method: prune, amount: 1.5}\n")
    err = user_error(capsys, "study", spec, "--runs", tmp_path / "r")
    assert "amount" in err


def test_option_of_the_wrong_type(capsys, tmp_path):
    err = user_error(capsys, "train", "--model", "cnn1d", "--data", "mnist1d", "--epochs", "abc")
    assert "--epochs" in err
    err = user_error(capsys, "train", "--model", "cnn1d", "--data", "mnist1d", "--option", "width=abc",
                     "--runs", tmp_path / "r")
    assert "width" in err
    err = user_error(capsys, "info", "--model", "cnn1d", "--option", "depthh=2", "--input-shape", "1x40")
    assert "depthh" in err and "width" in err


def test_checkpoint_not_matching_its_model_json(capsys, tmp_path):
    ckpt = _train(capsys, tmp_path / "runs")["checkpoint"]
    cfg_path = tmp_path / "runs" / ckpt.rsplit("/", 1)[1] / "model.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["options"]["width"] = 12
    cfg_path.write_text(json.dumps(cfg))
    err = user_error(capsys, "evaluate", ckpt, "--data", "mnist1d")
    assert "model.safetensors" in err and "model.json" in err


def test_checkpoint_on_the_wrong_dataset(capsys, tmp_path):
    ckpt = _train(capsys, tmp_path / "runs")["checkpoint"]
    err = user_error(capsys, "evaluate", ckpt, "--data", "digits")
    assert "digits" in err


def test_help_has_examples(capsys):
    for cmd in ("train", "info", "evaluate", "compare", "study"):
        code, out, _ = run(capsys, cmd, "--help")
        assert code == 0 and "Example" in out and "--json" in out


def test_info_without_an_input_shape_counts_params_and_says_why_macs_are_missing(capsys):
    assert main(["info", "--model", "resnet20", "--in-channels", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params"] == 269_722  # He et al. 2016's ResNet-20 on CIFAR-10: 0.27M
    assert r["bytes"] == 4 * r["params"] and r["macs"] is None and r["bops"] is None and "--input-shape" in r["note"]
    assert main(["info", "--model", "resnet20", "--in-channels", "3"]) == 0
    out = capsys.readouterr().out
    assert "269,722" in out and "macs" not in out and "note: MACs and BOPs depend on the input" in out
    assert main(["info", "--model", "resnet20", "--latency"]) == 2
    assert "--latency needs an input shape" in capsys.readouterr().err
