"""Hugging Face models as compresslab models: ``bert``, ``hf:DIR``, ``hf-config:FILE``.

Everything runs on a tiny BERT (vocabulary 50, hidden 32, 2 layers, 4 heads, 16 tokens)
built from a config, so no download is ever needed. Counts are checked against hand
formulas, rebuilt checkpoints against the model that was saved.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers does not import here")

from compresslab.cli import main  # noqa: E402
from compresslab.compress.prune import prunable_parameters, prune, sparsity_report  # noqa: E402
from compresslab.compress.quantize import (  # noqa: E402
    apply_static_int8,
    attach_fake_quant,
    calibrate_static_int8,
    dynamic_int8_transform,
    quantize_dynamic_int8,
    strip_fake_quant,
)
from compresslab.compress.structured import structured_prune  # noqa: E402
from compresslab.data.core import IGNORE_INDEX, Dataset  # noqa: E402
from compresslab.errors import UserError  # noqa: E402
from compresslab.measure.cost import count_params, latency, layer_costs  # noqa: E402
from compresslab.models import build_from_config, capture_features, create_model, feature_points, model_config  # noqa: E402
from compresslab.models.hf import HFClassifier, check_text_model, text_model_options  # noqa: E402
from compresslab.ort import example_input, export_onnx, session  # noqa: E402
from compresslab.runs.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from compresslab.steps.common import build  # noqa: E402

V, D, FF, LAYERS, HEADS, L, C, POS = 50, 32, 64, 2, 4, 16, 5, 64
TINY = {"hidden": D, "layers": LAYERS, "heads": HEADS, "intermediate": FF, "vocab_size": V, "max_positions": POS}


def tiny(head: str = "token", seed: int = 0, **extra) -> HFClassifier:
    torch.manual_seed(seed)
    return create_model("bert", num_classes=C, in_channels=L, input_shape=(L,), head=head, **{**TINY, **extra}).eval()


def ids(n: int = 4, real: int = 12, seed: int = 1) -> torch.Tensor:
    """``n`` sequences of ``real`` tokens (ids 1..V-1) padded with 0 to ``L``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, V, (n, L), generator=g)
    x[:, real:] = 0
    return x


def text_data(level: str = "token", n: int = 24, vocab: int = V) -> Dataset:
    """A text Dataset as the loaders make it: ids padded with 0, token labels -100 at pads."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, vocab, (n, L), generator=g)
    lengths = torch.randint(4, L + 1, (n,), generator=g)
    pad = torch.arange(L)[None, :] >= lengths[:, None]
    x[pad] = 0
    if level == "token":
        y = torch.randint(0, C, (n, L), generator=g)
        y[pad] = IGNORE_INDEX
    else:
        y = torch.randint(0, C, (n,), generator=g)
    k = n // 3
    text = {"level": level, "pad_id": 0, "vocab_size": vocab, "tokenizer": "word",
            "labels": [f"c{i}" for i in range(C)], "max_len": L}
    return Dataset("text-test", x[:k], y[:k], x[k:2 * k], y[k:2 * k], x[2 * k:], y[2 * k:], num_classes=C,
                   meta={"text": text})


def bert_params(head: str = "token", d: int = D, ff: int = FF, layers: int = LAYERS, heads_kept: int = HEADS) -> int:
    """BERT's parameters by hand: embeddings (words, positions, 2 token types, LayerNorm),
    per layer Q/K/V/O, two LayerNorms and the feed-forward pair, then the head."""
    a = d // HEADS * heads_kept  # total width of the kept heads
    embeddings = V * d + POS * d + 2 * d + 2 * d
    layer = 3 * (d * a + a) + (a * d + d) + 2 * d + (d * ff + ff) + (ff * d + d) + 2 * d
    classifier = d * C + C + ((d * d + d) if head == "sequence" else 0)  # a sequence head has the pooler
    return embeddings + layers * layer + classifier


def bert_macs(head: str = "token", ff: int = FF, heads_kept: int = HEADS) -> int:
    """MACs of one sequence of L tokens: per layer Q/K/V/O projections, the feed-forward pair
    and the attention matmuls (Q K^T and A V: 2 L^2 per kept head dimension); embeddings 0."""
    a = D // HEADS * heads_kept
    layer = 3 * D * a * L + a * D * L + 2 * D * ff * L + 2 * L * L * a
    classifier = D * C * L if head == "token" else D * D + D * C  # sequence: pooler and classifier on [CLS]
    return LAYERS * layer + classifier


# ---------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("head", ["token", "sequence"])
def test_bert_shapes_params_and_macs_match_hand_counts(head):
    model = tiny(head)
    out = model(ids())
    assert out.shape == ((4, L, C) if head == "token" else (4, C))
    assert count_params(model) == bert_params(head)
    rows = layer_costs(model, (L,))
    assert sum(r["macs"] for r in rows) == bert_macs(head)
    assert rows[-1]["type"] == "matmul" and rows[-1]["macs"] == LAYERS * 2 * L * L * D  # the attention matmuls


def test_a_wrapped_transformers_model_gets_its_attention_counted():
    """Any module holding a transformers model (a live-API wrapper, say) has its attention
    matmuls counted, without declaring ``activation_matmuls``."""

    class Plain(torch.nn.Module):
        input_dtype, vocab_size = torch.int64, V

        def __init__(self, hf):
            super().__init__()
            self.m = hf

        def forward(self, x):
            return self.m(input_ids=x).logits

    assert sum(r["macs"] for r in layer_costs(Plain(tiny().hf), (L,))) == bert_macs()


def test_padding_is_masked_out():
    """6 tokens padded to 16 give, on those tokens, the logits of the 6 tokens alone: padded
    positions are never attended to (attention mask = ids != pad_id)."""
    model = tiny()
    x = ids(1, real=6)
    alone = model.hf(input_ids=x[:, :6]).logits
    torch.testing.assert_close(model(x)[:, :6], alone, atol=1e-5, rtol=1e-5)
    unmasked = model.hf(input_ids=x).logits  # transformers without a mask attends to the pads too
    assert not torch.allclose(unmasked[:, :6], alone, atol=1e-4)


def test_float_ids_are_read_back_as_ids():
    model = tiny()
    x = ids()
    torch.testing.assert_close(model(x.float()), model(x))


def test_bert_rebuilds_from_its_config_and_checkpoint(tmp_path):
    model = tiny()
    cfg = model_config(model)
    assert cfg["options"]["hidden"] == D and "config" not in cfg["options"]  # the options rebuild it
    assert count_params(build_from_config(cfg)) == count_params(model)
    save_checkpoint(tmp_path / "ck", model)
    loaded, _ = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(loaded(ids()), model(ids()))


def test_feature_points_are_the_encoder_layers():
    model = tiny()
    points = feature_points(model)
    assert points == {"layer0": "hf.bert.encoder.layer.0", "layer1": "hf.bert.encoder.layer.1"}
    with capture_features(model) as feats:
        model(ids(3))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"layer0": (3, L, D), "layer1": (3, L, D)}
    with capture_features(model.hf) as raw:  # a transformers model on its own: the same layers
        model.hf(input_ids=ids(3))
    assert set(raw) == {"layer0", "layer1"}


# ---------------------------------------------------------------------------------------- hf:DIR, hf-config:FILE


def test_hf_dir_keeps_the_body_gets_a_fresh_head_and_rebuilds_without_the_directory(tmp_path):
    directory = tmp_path / "bert-dir"
    config = transformers.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                     intermediate_size=FF, max_position_embeddings=POS, num_labels=7)
    torch.manual_seed(3)
    transformers.BertForTokenClassification(config).save_pretrained(directory)  # a head of 7 tags
    body = transformers.BertForTokenClassification.from_pretrained(directory).bert.state_dict()

    model = create_model(f"hf:{directory}", num_classes=3, in_channels=L, input_shape=(L,)).eval()
    assert model.hf.classifier.out_features == 3  # a fresh head for 3 classes
    for k, v in model.hf.bert.state_dict().items():
        torch.testing.assert_close(v, body[k])  # the pretrained body
    recorded = model_config(model)["options"]["config"]
    assert recorded["hidden_size"] == D and "id2label" not in recorded

    save_checkpoint(tmp_path / "ck", model)
    shutil.rmtree(directory)
    loaded, _ = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(loaded(ids()), model(ids()))


def test_hf_config_file_builds_an_untrained_student_with_the_data_vocabulary(tmp_path):
    path = tmp_path / "student.json"
    path.write_text(json.dumps(transformers.BertConfig(vocab_size=1000, hidden_size=D, num_hidden_layers=1,
                                                       num_attention_heads=HEADS, intermediate_size=FF,
                                                       max_position_embeddings=POS).to_dict()))
    model = create_model(f"hf-config:{path}", num_classes=C, in_channels=L, vocab_size=V, head="sequence")
    assert model.vocab_size == V and model(ids()).shape == (4, C)
    save_checkpoint(tmp_path / "ck", model.eval())
    path.unlink()
    loaded, _ = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(loaded(ids()), model(ids()))


@pytest.mark.parametrize("name, says", [
    ("hf:bert-base-cased", "huggingface-cli download bert-base-cased --local-dir DIR"),
    ("hf:{tmp}", "has no config.json"),
    ("hf-config:{tmp}/missing.json", "not found"),
    ("hf:", "give what follows"),
])
def test_bad_hf_names_are_one_line_user_errors(tmp_path, name, says):
    with pytest.raises(UserError, match=says) as err:
        create_model(name.format(tmp=tmp_path), num_classes=C, in_channels=L)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("source, says", [("bert-base-cased", "huggingface-cli download"),
                                          ("{tmp}/no-such-dir", "no directory"),
                                          ("{tmp}", "has no config.json")])
def test_hub_name_or_missing_directory_exits_2_with_one_line(tmp_path, capsys, source, says):
    assert main(["info", "--model", f"hf:{source.format(tmp=tmp_path)}", "--input-shape", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err


# ---------------------------------------------------------------------------------------- text data


def test_text_data_fills_vocab_pad_and_head_unless_set():
    seq = text_data("sequence").text
    assert text_model_options("bert", seq, {"hidden": 32}) == {"hidden": 32, "vocab_size": V, "pad_id": 0,
                                                               "head": "sequence"}
    assert text_model_options("bert", seq, {"vocab_size": 99, "head": "token"})["vocab_size"] == 99
    assert text_model_options("bert", text_data("token").text, {}) == {"vocab_size": V, "pad_id": 0}
    assert text_model_options("cnn1d", seq, {"width": 8}) == {"width": 8}  # it takes none of them
    assert text_model_options("bert", None, {"hidden": 32}) == {"hidden": 32}


def test_build_gives_a_text_model_the_data_vocabulary():
    data = text_data("sequence", vocab=37)
    model = build({"name": "bert", "options": {"hidden": D, "layers": 1, "heads": HEADS}}, data, 0)
    assert model.vocab_size == 37 and model.head == "sequence" and model(data.x_test).shape == (len(data.x_test), C)


def test_vocabulary_mismatch_is_refused():
    data = text_data(vocab=V)
    with pytest.raises(UserError, match=f"vocabulary mismatch: data ids go up to {V - 1} but the model embeds 20"):
        build({"name": "bert", "options": {**TINY, "vocab_size": 20}}, data, 0)
    check_text_model(tiny(), data.text)  # a big enough embedding passes
    with pytest.raises(UserError, match="longer than the model's 8 positions"):
        check_text_model(tiny(max_positions=8), data.text)


# ---------------------------------------------------------------------------------------- compression


def test_global_l1_covers_linear_and_layernorm_but_not_embeddings():
    model = tiny()
    params = prunable_parameters(model)
    assert params and not any("embeddings." in n and "LayerNorm" not in n for n in params)
    assert all(n.endswith((".weight", ".bias")) for n in params)
    words = model.hf.bert.embeddings.word_embeddings.weight.detach().clone()
    masks = prune(model, 0.5)
    report = sparsity_report(model, masks)
    assert report["global"] == pytest.approx(0.5, abs=1e-3)
    assert report["total"] == sum(p.numel() for p in params.values())
    assert torch.equal(model.hf.bert.embeddings.word_embeddings.weight, words)  # embeddings untouched
    assert torch.isfinite(model(ids())).all()


def test_structured_pruning_removes_heads_and_ffn_channels_and_rebuilds(tmp_path):
    model = tiny()
    x = ids()
    report = structured_prune(model, (L,), amount=0.5)
    attention = model.hf.bert.encoder.layer[0].attention.self
    assert attention.num_attention_heads == HEADS // 2 and attention.query.out_features == D // 2
    assert model.hf.bert.encoder.layer[0].intermediate.dense.out_features == FF // 2
    assert model.hf.bert.embeddings.word_embeddings.embedding_dim == D  # the hidden width is kept
    assert report["params_after"] == count_params(model) == bert_params(ff=FF // 2, heads_kept=HEADS // 2)
    assert report["macs_after"] == bert_macs(ff=FF // 2, heads_kept=HEADS // 2)
    assert model(x).shape == (4, L, C)
    save_checkpoint(tmp_path / "ck", model)
    loaded, cfg = load_checkpoint(tmp_path / "ck")
    assert cfg["structure"] and loaded.hf.bert.encoder.layer[1].attention.self.num_attention_heads == HEADS // 2
    torch.testing.assert_close(loaded(x), model(x))


def test_taylor_importance_reads_token_labels():
    data = text_data()
    model = tiny()
    report = structured_prune(model, (L,), amount=0.25, importance="taylor", data=(data.x_train, data.y_train))
    assert report["params_after"] < report["params_before"]


@pytest.mark.parametrize("backend", ["torch.ao", "onnxruntime"])
def test_dynamic_int8_stays_close_and_runs_on_token_ids(backend):
    model = tiny()
    transform = dynamic_int8_transform(model, backend)
    q = quantize_dynamic_int8(model, transform)
    x = ids()
    ref, got = model(x), q(x)
    assert got.shape == ref.shape and (got - ref).abs().max() < 0.05
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert set(latency(q, (L,), batch_sizes=(1,), repeats=2)) == {"batch1"}  # fed token ids


def test_static_int8_falls_back_to_onnxruntime_with_token_ids():
    model = tiny()
    batches = [ids(4, real=r, seed=r) for r in (5, 9, 16)]
    transform = calibrate_static_int8(model, batches)  # torch.ao's FX cannot trace transformers
    assert transform["backend"] == "onnxruntime"
    q = apply_static_int8(model, transform, batches[0])
    ref, got = model(batches[1]), q(batches[1])
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9 and (got - ref).abs().max() < 0.1


def test_fake_quant_and_qat_gradients():
    model = tiny()
    x = ids()
    ref = model(x)
    attach_fake_quant(model, 8)
    fq = model(x)
    assert 0 < (fq - ref).abs().max() < 0.05  # 8-bit weights: close, not equal
    model.train()
    model(x).logsumexp(-1).mean().backward()  # straight-through gradients reach the latent weights
    assert model.hf.bert.encoder.layer[0].intermediate.dense.parametrizations.weight.original.grad is not None
    strip_fake_quant(model)
    torch.testing.assert_close(model.eval()(x), ref)


def test_onnx_export_takes_int64_ids_and_matches_with_padding(tmp_path):
    model = tiny()
    example = example_input(model, (L,), 2)
    assert example.dtype == torch.int64 and (example[:, -1] == 0).all() and (example[:, :-1] != 0).all()
    path = tmp_path / "bert.onnx"
    export_onnx(model, (L,), path)
    sess = session(path)
    assert sess.get_inputs()[0].type == "tensor(int64)"
    for real in (L, 9, 3):  # no padding, some, most: the mask is in the graph, not traced away
        x = ids(5, real=real)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------- the command line on CoNLL


def write_conll(folder, n_train: int = 40, n_test: int = 12) -> str:
    """A tiny CoNLL-2003-style corpus (species and places tagged in BIO); returns its data name."""
    rng = np.random.default_rng(0)
    species, places = ["tiger", "panda", "rhino", "vaquita"], ["Sumatra", "Borneo", "Congo"]
    fillers = ["the", "a", "rare", "is", "in", "seen", "near", "found"]

    def sentence() -> str:
        rows = []
        for _ in range(rng.integers(3, 8)):
            r = rng.random()
            if r < 0.25:
                rows.append(f"{rng.choice(species)} B-SPECIES")
            elif r < 0.35:
                rows += ["Lake B-LOC", f"{rng.choice(places)} I-LOC"]
            else:
                rows.append(f"{rng.choice(fillers)} O")
        return "\n".join(rows)

    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", n_train), ("test.txt", n_test)):
        (folder / name).write_text("\n\n".join(sentence() for _ in range(n)) + "\n")
    return f"conll:{folder}"


def cli_json(capsys, *args) -> dict:
    assert main([*map(str, args), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_cli_refuses_a_model_with_a_smaller_vocabulary(tmp_path, capsys):
    data = write_conll(tmp_path / "conll")
    small = transformers.BertConfig(vocab_size=8, hidden_size=D, num_hidden_layers=1, num_attention_heads=HEADS,
                                    intermediate_size=FF, max_position_embeddings=POS)
    transformers.BertForTokenClassification(small).save_pretrained(tmp_path / "small-bert")
    code = main(["train", "--model", f"hf:{tmp_path / 'small-bert'}", "--data", data, "--epochs", "1",
                 "--runs", str(tmp_path / "runs")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "vocabulary mismatch" in err[0] and "model embeds 8" in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("train-*"))


@pytest.mark.slow
def test_cli_train_prune_quantize_export_a_tiny_bert_on_conll(tmp_path, capsys):
    data, runs = write_conll(tmp_path / "conll"), tmp_path / "runs"
    opts = ["-o", "hidden=32", "-o", "heads=4", "-o", "layers=2", "-o", "max_positions=64"]
    trained = cli_json(capsys, "train", "-m", "bert", *opts, "--data", data, "--epochs", "2", "--runs", runs)
    parent = trained["checkpoint"]
    recorded = json.loads((Path(parent) / "model.json").read_text())["model"]
    assert recorded["options"]["vocab_size"] > 2 and recorded["input_shape"] == [recorded["in_channels"]]

    pruned = cli_json(capsys, "prune", parent, "--data", data, "--amount", "0.5", "--runs", runs)
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    heads = cli_json(capsys, "prune", parent, "--data", data, "--method", "channel", "--amount", "0.5",
                     "--finetune-epochs", "0", "--runs", runs)
    assert heads["structured"]["params_after"] < heads["structured"]["params_before"]
    int8 = cli_json(capsys, "quantize", parent, "--data", data, "--scheme", "ptq-dynamic", "--runs", runs)
    assert int8["vs_parent"]["agreement"] > 0.9
    exported = cli_json(capsys, "export", heads["checkpoint"], "--data", data, "--onnx", tmp_path / "bert.onnx",
                        "--int8")
    assert exported["parity"]["fp32"]["max_abs_diff"] < 1e-4 and exported["parity"]["fp32"]["top1_agreement"] == 1
    assert exported["scored_tokens"] > 0 and (tmp_path / "bert.onnx").is_file()
