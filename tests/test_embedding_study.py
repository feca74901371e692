"""Embedding compression for re-identification: the embedder, the triplet term, P x K
batches, pruning and quantising the stored embedding, and the study through the CLI."""
import json

import numpy as np
import pytest
import torch
import yaml

from compresslab.cli import main
from compresslab.compress.embedding import (
    apply_embedding_quant_transform,
    attach_embedding_quant,
    detach_embedding_quant,
    embedding_quantizer,
    prune_embedder,
)
from compresslab.data.core import pk_order
from compresslab.errors import UserError
from compresslab.models import build_from_config, capture_features, create_model, model_config
from compresslab.models.embedding import embed
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.train import Recipe
from compresslab.train.losses import BatchHardTriplet, Matryoshka, StepContext


def embedder(**options):
    opts = {"backbone": "mlp", "backbone_options": {"widths": [16]}, "dim": 8, **options}
    return create_model("embedder", num_classes=5, in_channels=1, input_shape=(1, 4, 4), **opts)


def test_the_embedder_has_the_stated_parameters_and_rebuilds():
    m = embedder(rank=4, slice=3)
    # mlp 16 -> 16 -> dim 8, bottleneck 8 -> 4 (no bias), BNNeck on 3 dims (weight, bias), classifier 3 -> 5
    assert sum(p.numel() for p in m.parameters()) == (16 * 16 + 16) + (16 * 8 + 8) + 8 * 4 + 2 * 3 + 3 * 5
    x = torch.randn(6, 1, 4, 4)
    assert m(x).shape == (6, 5) and embed(m, x).shape == (6, 3)
    again = build_from_config(model_config(m))
    assert again.state_dict().keys() == m.state_dict().keys()
    for bad, needle in (({"slice": 9}, "wider than the embedding"), ({"rank": 9}, "rank 9"),
                        ({"backbone": "embedder"}, "plain model")):
        with pytest.raises(UserError, match=needle) as err:
            embedder(**bad)
        assert "\n" not in str(err.value)


def test_normalised_and_nested_embedders():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 4, 4)
    assert torch.allclose(embed(embedder(normalize=True), x).norm(dim=1), torch.ones(6))
    m = embedder(nested=[4, 2])
    assert m.nested == (2, 4)
    with capture_features(m, ["neck"]) as f:
        logits = m(x)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ctx = StepContext(m, x, y, None, logits, f, 1, 1, 1)
    w = m.classifier.weight
    by_hand = sum(torch.nn.functional.cross_entropy(f["neck"][:, :k] @ w[:, :k].T, y) for k in (2, 4)) / 2
    assert torch.allclose(Matryoshka()(ctx), by_hand)
    with pytest.raises(UserError, match="nested widths"):
        Matryoshka()(StepContext(embedder(), x, y, None, logits, f, 1, 1, 1))
    with pytest.raises(UserError, match="nested widths"):
        embedder(nested=[8])


def test_batch_hard_triplet_matches_a_loop():
    torch.manual_seed(0)
    e = torch.randn(8, 5)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    ctx = StepContext(None, None, y, None, None, {"embedding": e}, 1, 1, 1)
    expected = []
    for a in range(8):
        pos = [torch.dist(e[a], e[p]) for p in range(8) if p != a and y[p] == y[a]]
        neg = [torch.dist(e[a], e[n]) for n in range(8) if y[n] != y[a]]
        if pos and neg:
            expected.append(max(0.0, float(max(pos) - min(neg)) + 0.3))
    assert float(BatchHardTriplet()(ctx)) == pytest.approx(np.mean(expected), rel=1e-5)


def test_pk_batches_hold_runs_of_one_class():
    y = torch.tensor([0] * 7 + [1] * 2 + [2] * 5 + [3] * 1)
    order = pk_order(y, batch_size=8, instances=4, steps=3, generator=torch.Generator().manual_seed(1))
    assert order.shape == (24,)
    runs = y[order].view(-1, 4)
    assert bool((runs == runs[:, :1]).all())  # every run of 4 is one class
    assert torch.equal(order, pk_order(y, 8, 4, 3, generator=torch.Generator().manual_seed(1)))
    assert set(order[y[order] == 3].tolist()) == {14}  # a class of one example fills its run with itself
    assert "sampler" not in Recipe().model_dump() and Recipe(sampler="pk", batch_size=8).model_dump()["sampler"] == "pk"
    with pytest.raises(ValueError, match="multiple of pk_instances"):
        Recipe(sampler="pk", batch_size=6)


def test_pruning_keeps_the_chosen_dimensions_of_the_embedding():
    torch.manual_seed(0)
    m = embedder().eval()
    x = torch.randn(10, 1, 4, 4)
    keep = torch.tensor([1, 4, 6])
    pruned = prune_embedder(m, keep).eval()
    assert model_config(pruned)["options"]["dim"] == 3
    assert torch.allclose(embed(pruned, x), embed(m, x)[:, keep])
    with pytest.raises(UserError, match="plain embedder"):
        prune_embedder(embedder(slice=4), keep)


def test_the_quantised_embedding_round_trips_through_its_transform():
    torch.manual_seed(0)
    m = embedder()
    x = torch.randn(32, 1, 4, 4)
    fq = attach_embedding_quant(m, 3)
    m.train()
    m(x)  # the range from this batch
    transform = detach_embedding_quant(m)
    assert transform["kind"] == "embedding-quant" and len(transform["lo"]) == 8
    q = apply_embedding_quant_transform(m, transform)
    e = embed(q, x)
    quantizer = embedding_quantizer(q)
    assert torch.equal(quantizer.decode(quantizer.encode(e)), e)  # on the 3-bit grid
    assert len(torch.unique(e[:, 0])) <= 2 ** 3 and embedding_quantizer(m) is None and fq.bits == 3
    with capture_features(q, ["embedding"]) as f:
        q(x)
    assert torch.equal(f["embedding"], e)


SPEC = {
    "kind": "embedding-compression", "name": "tiny-emb", "data": "identities:synthetic@900", "seeds": [0, 1],
    "model": {"name": "embedder", "options": {"backbone": "mlp", "backbone_options": {"widths": [64]}, "dim": 32}},
    "recipe": {"optimizer": "adam", "lr": 0.003, "weight_decay": 0.0, "epochs": 2, "batch_size": 64, "sampler": "pk"},
    "finetune": {"epochs": 1, "lr": 0.001},
    "methods": [{"method": "slice", "dims": 8}, {"method": "pca", "dims": 8}, {"method": "prune", "dims": 8, "rounds": 2},
                {"method": "qat", "bits": 4}, {"method": "qat", "bits": 1, "dims": 8}, {"method": "rank", "dims": 4},
                {"method": "matryoshka", "dims": 4}, {"method": "matryoshka", "dims": 16}],
    "gallery_size": 2000,
}


def test_tiny_study_end_to_end_through_the_cli(tmp_path, capsys):
    path = tmp_path / "emb.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    runs = tmp_path / "runs"
    assert main(["study", str(path), "--runs", str(runs), "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    s = r["summaries"]
    assert set(s) == {"parent", "independent", "slice-8", "pca-8", "prune-8", "qat-4b", "slice-8+qat-1b", "rank-4",
                      "matryoshka-4", "matryoshka-16"}
    assert s["matryoshka-4"]["ratio"] == 8 and s["matryoshka-16"]["family"] == "matryoshka"
    nested = {m["step"] for m in r["models"] if m["name"].startswith("matryoshka") and m["seed"] == 0}
    assert len(nested) == 1  # one model per seed serves every nested width
    # bytes from the stored codes: 32 float32 dims = 128; 4 bits x 32 = 16; 1 bit x 8 = 1
    assert (s["parent"]["bytes"], s["qat-4b"]["bytes"], s["slice-8+qat-1b"]["bytes"]) == (128, 16, 1)
    assert (s["qat-4b"]["ratio"], s["slice-8+qat-1b"]["ratio"], s["prune-8"]["ratio"]) == (8, 128, 4)
    assert all(0 <= m["mAP"] <= 1 and m["n_queries"] > 0 for m in r["models"])
    assert s["parent"]["mAP"]["n"] == 2 and s["independent"]["neighbour_overlap"]["mean"] < 1
    assert "96x or more" in r["verdict_96x"] and "slice-8+qat-1b at 128x" in r["verdict_96x"]
    assert r["verdict_96x"] in r["headline"]
    out = next((runs / "studies").iterdir())
    assert (out / "map_ratio.png").read_bytes()[:4] == b"\x89PNG" and "compression ratio" in (out / "report.html").read_text()
    # the stored model of a QAT child rebuilds with its quantiser
    qat = next(m for m in r["models"] if m["name"] == "qat-4b")
    model, cfg = load_checkpoint(runs / qat["step"])
    assert cfg["transforms"][0]["kind"] == "embedding-quant" and embedding_quantizer(model).bits == 4
    assert main(["study", str(path), "--runs", str(runs), "--quiet", "--json"]) == 0
    assert not json.loads(capsys.readouterr().out)["steps"]["ran"]


@pytest.mark.parametrize("change, needle", [
    ({"methods": [{"method": "slice", "dims": 32}]}, "wider than D"),
    ({"methods": [{"method": "qat", "bits": 17}]}, "bits"),
    ({"methods": [{"method": "qat"}]}, "qat needs bits"),
    ({"methods": [{"method": "slice", "dims": 8}, {"method": "slice", "dims": 8}]}, "same method twice"),
    ({"data": "digits"}, "no query/gallery split"),
])
def test_bad_specs_are_one_line_errors_that_write_nothing(tmp_path, capsys, change, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **change}))
    assert main(["study", str(path), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_preset_expands_every_method_at_ratios_up_to_128x_without_duplicates():
    from compresslab.study import load_spec
    from compresslab.study.embedding import expand

    spec = load_spec(preset="embedding-compression")
    entries = expand(spec)
    assert len({e.step.hash for e in entries}) == len(entries)
    methods = {m.method for m in spec.methods}
    assert methods == {"slice", "rank", "pca", "prune", "qat", "matryoshka"} and len(spec.seeds) == 3
    dim = spec.model.options["dim"]
    ratios = {m.name: 32 * dim / ((m.dims or dim) * (m.bits or 32)) for m in spec.methods}
    reaching = {m.method for m in spec.methods if ratios[m.name] >= 96}
    assert reaching == methods  # every method at 96x or more; QAT through a slice (1 bit alone is 32x)
    assert max(r for m in spec.methods if m.method == "qat" and not m.dims for r in [ratios[m.name]]) == 32
    # a combination's QAT starts from the slice model of the same seed, trained once
    by = {e.name: e.step for e in entries}
    assert by["slice-32+qat-1b@s1"].parents["parent"].hash == by["slice-32@s1"].hash
