"""The compression-functional study end to end through the CLI (tiny), and its spec errors."""
import json

import pytest

from compresslab.cli import main

SPEC = """\
kind: compression-functional
name: tiny-cf
data: mnist1d
seeds: [0, 1]
parent: {name: cnn1d, options: {width: 8, depth: 2, hidden: 16}}
recipe: {optimizer: adam, lr: 0.01, weight_decay: 0, epochs: 2, batch_size: 256}
children:
  - {name: kd, method: distill, student: {name: cnn1d, options: {width: 4, depth: 2, hidden: 8}}}
  - {name: prune-50, method: prune, amount: 0.5}
  - {name: int8-dynamic, method: quantize, scheme: ptq-dynamic}
  - {name: w4a8, method: quantize, scheme: fake, bits: 4, act_bits: 8, per_channel: true}
  - {name: qat-w4, method: quantize, scheme: qat, bits: 4, epochs: 1}
  - {name: prune-50+w4, method: quantize, scheme: fake, bits: 4, source: prune-50}
latency: false
"""


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_study_through_the_cli(capsys, tmp_path):
    spec = tmp_path / "cf.yaml"
    spec.write_text(SPEC)
    runs = tmp_path / "runs"
    code, out, err = run(capsys, "study", spec, "--runs", runs, "--quiet", "--json")
    assert code == 0, err
    r = json.loads(out)
    names = ["parent", "kd", "prune-50", "int8-dynamic", "w4a8", "qat-w4", "prune-50+w4", "independent", "kd-scratch"]
    assert set(r["summaries"]) == set(names)  # --json sorts keys
    assert len(r["models"]) == 2 * len(names)
    fam = {n: s["family"] for n, s in r["summaries"].items()}
    assert fam["kd"] == "distillation" and fam["prune-50+w4"] == "pruning+quantization"
    assert fam["qat-w4"] == "quantization" and fam["kd-scratch"] == "scratch"
    s = r["summaries"]
    assert s["prune-50"]["compression_ratio"] == pytest.approx(2.0, rel=0.05)
    assert s["w4a8"]["compression_ratio"] > 5  # 4-bit weights (biases and BN stay fp32)
    assert s["prune-50+w4"]["compression_ratio"] > 1.8 * s["w4a8"]["compression_ratio"]
    assert s["int8-dynamic"]["agreement"]["mean"] > s["independent"]["agreement"]["mean"]
    assert s["int8-dynamic"]["cka"]["mean"] > 0.95 and s["parent"]["agreement"] is None
    for row in r["models"]:  # each model against its own replicate's parent
        if row["name"] == "parent":
            assert row["function"]["agreement"] == 1.0
    controls = {(t["label_a"], t["label_b"]) for t in r["tests"]}
    assert ("kd", "kd-scratch") in controls and ("w4a8", "independent") in controls
    assert {t["metric"] for t in r["tests"]} == {"agreement", "js_divergence", "cka"}
    assert any("distillation" in h for h in r["headline"])
    out_dir = next((runs / "studies").iterdir())
    assert (out_dir / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
    assert "independent retrain" in (out_dir / "report.html").read_text()
    # resuming reuses every step
    code, out, err = run(capsys, "study", spec, "--runs", runs, "--quiet", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["steps"]["ran"] == [] and len(again["steps"]["reused"]) == len(r["steps"]["ran"])
    code, out, err = run(capsys, "study", spec, "--runs", runs, "--quiet")
    assert code == 0 and "fidelity.png" in out and "closer to the parent" in out


@pytest.mark.parametrize("edit,needle", [
    (("source: prune-50", "source: kd"), "is not a prune child"),
    (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds must be distinct"),
    (("seeds: [0, 1]", "seeds: [0]"), "seeds"),
    (("scheme: ptq-dynamic}", "scheme: ptq-dynamic, bits: 4}"), "bits must be 8"),
    (("bits: 4, act_bits: 8", "bits: 1, act_bits: 8"), "bits"),
    (("latency: false", "latency: false\nfoo: 1"), "foo"),
])
def test_bad_specs_write_nothing(capsys, tmp_path, edit, needle):
    spec = tmp_path / "cf.yaml"
    spec.write_text(SPEC.replace(*edit))
    runs = tmp_path / "runs"
    code, _, err = run(capsys, "study", spec, "--runs", runs, "--quiet")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not runs.exists()
