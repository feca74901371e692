"""The Python API on live objects (compresslab.live, re-exported as compresslab.compare, ...)
and the model adapters of compresslab.models.io; the examples of docs/python-api.md run."""
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import compresslab
from compresslab import live
from compresslab.compress.prune import resolve_amount
from compresslab.data.core import IGNORE_INDEX
from compresslab.errors import UserError
from compresslab.measure.function import compare_logits
from compresslab.measure.weights import prunability
from compresslab.models.io import DictInputs, Logits, logits_of, stack_inputs

DOCS = Path(__file__).parent.parent / "docs" / "python-api.md"


def mlp(hidden=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, 3))


@pytest.fixture
def blobs():
    """Three separable Gaussian blobs in 6-D: (x, y), 240 examples."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g) * 3
    y = torch.arange(240) % 3
    return centres[y] + torch.randn(240, 6, generator=g), y


class Tagger(nn.Module):
    """A tiny token classifier taking keyword inputs and returning a dict, like a HF model."""

    def __init__(self, vocab=30, tags=4, width=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, tags)
        self.feature_points = {"body": "body"}

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.head(torch.relu(self.body(self.emb(input_ids))))}


@pytest.fixture
def tokens():
    """Dict data: 40 padded sequences of length 7; labels -100 at padding and at position 0."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 30, (40, 7), generator=g)
    mask = (torch.arange(7)[None] < torch.randint(2, 8, (40, 1), generator=g)).long()
    ids = ids * mask
    labels = (ids % 4).masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX  # e.g. [CLS]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -- compresslab.models.io --------------------------------------------------------------------


def test_logits_of_reads_every_output_form():
    from transformers.modeling_outputs import SequenceClassifierOutput

    t = torch.randn(2, 3)
    assert logits_of(t) is t
    assert logits_of(SequenceClassifierOutput(logits=t)) is t
    assert logits_of({"logits": t, "loss": None}) is t
    assert logits_of((t, torch.zeros(1))) is t
    with pytest.raises(UserError, match="not logits"):
        logits_of("text")
    assert torch.equal(Logits(nn.Identity())(t), t)


def test_dict_inputs_names_the_missing_argument():
    class NeedsSegments(nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids):
            return input_ids.float()

    with pytest.raises(UserError) as e:
        DictInputs(NeedsSegments(), ["input_ids", "attention_mask"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "'token_type_ids'" in msg and "add it to the batches or give it a default" in msg


def test_dict_inputs_rejects_a_key_the_forward_does_not_take():
    with pytest.raises(UserError, match="'pixel_values', which the model's forward does not take"):
        DictInputs(Tagger(), ["input_ids", "pixel_values"])


def test_dict_inputs_calls_the_model_with_keywords(tokens):
    model = Tagger()
    net = DictInputs(model, ["input_ids", "attention_mask"])
    x = stack_inputs(tokens, net.keys)
    assert x.shape == (40, 2, 7)
    assert torch.equal(net(x), model(tokens["input_ids"], tokens["attention_mask"])["logits"])
    assert net.feature_points == {"body": "model.body"}


def test_stack_inputs_needs_one_shape():
    with pytest.raises(UserError, match="share one shape"):
        stack_inputs({"a": torch.zeros(2, 3), "b": torch.zeros(2, 4)}, ["a", "b"])


# -- data -------------------------------------------------------------------------------------


def test_as_data_accepts_tensors_tuples_dicts_and_loaders(blobs, tokens):
    x, y = blobs
    assert live.as_data(x).y is None
    d = live.as_data((x, y))
    assert torch.equal(d.x, x) and torch.equal(d.y, y) and d.keys is None
    d = live.as_data(DataLoader(list(zip(x, y)), batch_size=50))
    assert torch.equal(d.x, x) and torch.equal(d.y, y)
    d = live.as_data(tokens)
    assert d.keys == ("input_ids", "attention_mask") and torch.equal(d.mask, tokens["attention_mask"])
    assert torch.equal(d.y, tokens["labels"]) and d.x.shape == (40, 2, 7)


def test_a_loader_of_ragged_dict_batches_is_padded():
    rows = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([1, 2, 0])},
            {"input_ids": torch.tensor([8]), "labels": torch.tensor([3])}]
    d = live.as_data(DataLoader(rows, batch_size=1))
    assert d.x[:, 0].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert d.y.tolist() == [[1, 2, 0], [3, IGNORE_INDEX, IGNORE_INDEX]]


def test_a_hugging_face_dataset_keeps_its_numeric_columns():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a b c", "d"], "input_ids": [[3, 4, 5], [6]],
                                     "label": [1, 0]})
    d = live.as_data(ds)
    assert d.keys == ("input_ids",)
    assert d.x[:, 0].tolist() == [[3, 4, 5], [6, 0, 0]] and d.y.tolist() == [1, 0]


def test_unusable_data_is_one_line():
    with pytest.raises(UserError, match="pass a tensor"):
        live.as_data(3.5)
    with pytest.raises(UserError, match="yielded no batches"):
        live.as_data(DataLoader([], batch_size=2))


# -- compare ----------------------------------------------------------------------------------


def test_a_model_compared_with_itself(blobs):
    m = mlp()
    r = compresslab.compare(m, m, blobs)
    assert r["agreement"] == 1.0 and r["kappa"] == 1.0 and r["n"] == 240
    assert r["kl_ab"] == 0.0 and r["js_divergence"] == 0.0
    assert set(r["cka"]) == {"0", "1"} and all(v == pytest.approx(1.0) for v in r["cka"].values())


def test_compare_is_the_cli_metrics_on_the_models_logits(blobs):
    x, y = blobs
    a, b = mlp(seed=0), mlp(seed=1)
    r = compresslab.compare(a, b, (x, y), cka=False)
    with torch.no_grad():
        ref = compare_logits(a(x), b(x), labels=y)
    assert {k: r[k] for k in ref} == pytest.approx(ref)


def test_token_level_outputs_are_scored_at_labelled_tokens(tokens):
    a, b = Tagger(seed=0), Tagger(seed=1)
    r = compresslab.compare(a, b, tokens)
    keep = tokens["labels"] != IGNORE_INDEX
    with torch.no_grad():
        la = a(tokens["input_ids"], tokens["attention_mask"])["logits"]
        lb = b(tokens["input_ids"], tokens["attention_mask"])["logits"]
    ref = compare_logits(la[keep], lb[keep], labels=tokens["labels"][keep])
    assert r["tokens"] == int(keep.sum()) and r["n"] == 40
    assert {k: r[k] for k in ref} == pytest.approx(ref)
    assert set(r["cka"]) == {"body"} and -1 <= r["cka"]["body"] <= 1


def test_without_labels_the_attention_mask_picks_the_tokens(tokens):
    a, b = Tagger(seed=0), Tagger(seed=1)
    unlabelled = {k: v for k, v in tokens.items() if k != "labels"}
    r = compresslab.compare(a, b, unlabelled, cka=False)
    assert r["tokens"] == int(tokens["attention_mask"].sum()) and "accuracy_a" not in r


def test_cka_points_pair_by_name_or_by_depth():
    four = nn.Sequential(*[nn.Linear(2, 2) for _ in range(5)])  # points 0..3
    two = nn.Sequential(*[nn.Linear(2, 2) for _ in range(3)])  # points 0..1
    assert live.cka_pairs(four, four) == [(p, p) for p in "0123"]
    assert live.cka_pairs(two, four) == [("0", "1"), ("1", "3")]
    assert live.cka_pairs(four, two) == [("1", "0"), ("3", "1")]


# -- cost, prunability, prune -----------------------------------------------------------------


def test_cost_of_a_linear_layer():
    r = compresslab.cost(nn.Linear(4, 3), torch.randn(2, 4), latency=False)
    assert (r["params"], r["macs"], r["bytes"]) == (15, 12, 60)
    r = compresslab.cost(nn.Linear(4, 3), torch.randn(2, 4), bits=8, batch_sizes=(1, 2))
    assert r["bytes"] == 15 and set(r["latency_ms"]) == {"batch1", "batch2"}


def test_cost_of_a_token_model_counts_every_position(tokens):
    example = {"input_ids": tokens["input_ids"][:1], "attention_mask": tokens["attention_mask"][:1]}
    r = compresslab.cost(Tagger(width=8, tags=4), example, latency=False)
    assert r["params"] == 30 * 8 + (8 * 8 + 8) + (8 * 4 + 4)
    assert r["macs"] == 7 * (8 * 8 + 8 * 4)  # both linear layers at each of the 7 positions


def test_cost_of_a_transformers_bert_counts_attention():
    transformers = pytest.importorskip("transformers")
    d, inter, tags, length = 8, 16, 3, 6
    bert = transformers.BertForTokenClassification(transformers.BertConfig(
        vocab_size=50, hidden_size=d, num_hidden_layers=1, num_attention_heads=2, intermediate_size=inter,
        max_position_embeddings=length, num_labels=tags))
    example = {"input_ids": torch.randint(1, 50, (1, length)), "attention_mask": torch.ones(1, length, dtype=torch.long)}
    r = compresslab.cost(bert, example, latency=False)
    per_token = 4 * d * d + 2 * d * inter + d * tags  # Q, K, V, output; feed-forward; classifier
    attention = 2 * length * length * d  # Q K^T and softmax(.) V over all heads
    assert r["macs"] == length * per_token + attention
    assert r["params"] == sum(p.numel() for p in bert.parameters())


def test_prunability_is_the_cli_report():
    m = mlp()
    assert compresslab.prunability(m) == prunability(m)
    assert resolve_amount("safe", m)[0] == prunability(m)["safe_amount"]


def test_prune_returns_a_copy_with_half_the_covered_entries_zeroed():
    m = mlp()
    p = compresslab.prune(m, amount=0.5)
    covered = [n for n, _ in p.named_parameters()]  # every Linear weight and bias
    total = sum(q.numel() for q in p.parameters())
    zeros = sum(int((q == 0).sum()) for q in p.parameters())
    assert len(covered) == 4 and zeros == round(0.5 * total)
    assert all(int((q == 0).sum()) == 0 for q in m.parameters())  # the original is untouched


def test_channel_pruning_makes_a_smaller_copy():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    p = compresslab.prune(m, 0.5, method="channel", example=torch.randn(1, 6))
    assert p[0].out_features == 8 and p[4].out_features == 3  # the logits layer is protected
    assert compresslab.cost(p, torch.randn(1, 6), latency=False)["params"] < sum(q.numel() for q in m.parameters())
    with pytest.raises(UserError, match="example input"):
        compresslab.prune(m, 0.5, method="channel")


def test_prune_then_fine_tune_keeps_the_zeros(blobs):
    m = mlp()
    p = compresslab.prune(m, amount=0.7, method="layer-l1", data=blobs,
                          recipe={"epochs": 2, "optimizer": "adam", "lr": 1e-2, "batch_size": 32})
    w = p[0].weight
    assert int((w == 0).sum()) == round(0.7 * w.numel())


# -- quantize ---------------------------------------------------------------------------------


def test_dynamic_int8_keeps_the_function(blobs):
    x, y = blobs
    m = mlp(hidden=32)
    compresslab.train(m, (x, y), {"epochs": 3, "optimizer": "adam", "lr": 1e-2, "batch_size": 32})
    q = compresslab.quantize(m, scheme="dynamic")
    assert type(q[0]) is not nn.Linear  # int8 kernels
    assert compresslab.compare(m, q, (x, y), cka=False)["agreement"] >= 0.97
    s = compresslab.quantize(m, scheme="static", calibration=x)  # int8 activations, ranges from x
    assert compresslab.compare(m, s, (x, y), cka=False)["agreement"] >= 0.95


def test_fake_quant_puts_weights_on_the_grid(blobs):
    m = mlp()
    q = compresslab.quantize(m, bits=2, act_bits=8, scheme="fake", calibration=blobs)
    assert len(torch.unique(q[0].weight)) <= 3  # 2-bit symmetric: -1, 0, 1 times the scale
    assert torch.equal(m[0].weight, mlp()[0].weight)  # the original is untouched


def test_quantize_rejects_what_it_cannot_do(blobs):
    with pytest.raises(UserError, match="int8 kernels"):
        compresslab.quantize(mlp(), bits=4, scheme="dynamic")
    with pytest.raises(UserError, match="needs data"):
        compresslab.quantize(mlp(), scheme="static")
    with pytest.raises(UserError, match="scheme 'int4'"):
        compresslab.quantize(mlp(), scheme="int4")


# -- train, distill ---------------------------------------------------------------------------


def test_train_in_place_with_a_recipe_dict(blobs):
    m = mlp()
    r = compresslab.train(m, blobs, {"epochs": 3, "optimizer": "adam", "lr": 1e-2, "batch_size": 32})
    assert r["model"] is m and len(r["history"]) == 3 and r["steps"] == 3 * 8
    assert r["history"][-1]["acc"] > 0.9
    with pytest.raises(UserError, match="recipe"):
        compresslab.train(m, blobs, {"epochs": -1})
    with pytest.raises(UserError, match="needs labels"):
        compresslab.train(m, blobs[0])


def test_distill_lowers_kl_to_the_teacher(blobs):
    teacher, student = mlp(hidden=32, seed=0), mlp(hidden=4, seed=1)
    compresslab.train(teacher, blobs, {"epochs": 3, "optimizer": "adam", "lr": 1e-2, "batch_size": 32})
    before = compresslab.compare(teacher, student, blobs, cka=False)["kl_ab"]
    r = compresslab.distill(teacher, student, blobs[0], loss={"kd": 1.0},
                            recipe={"epochs": 5, "optimizer": "adam", "lr": 1e-2, "batch_size": 32})
    after = compresslab.compare(teacher, student, blobs, cka=False)["kl_ab"]
    assert r["model"] is student and after < before / 2


def test_distill_a_token_model_from_dict_batches(tokens):
    teacher, student = Tagger(seed=0, width=16), Tagger(seed=1, width=4)
    loader = DataLoader([{k: v[i] for k, v in tokens.items()} for i in range(40)], batch_size=8)
    before = compresslab.compare(teacher, student, loader, cka=False)["kl_ab"]
    compresslab.distill(teacher, student, loader, loss={"kd": 1.0},
                        recipe={"epochs": 8, "optimizer": "adam", "lr": 3e-2, "batch_size": 8})
    assert compresslab.compare(teacher, student, loader, cka=False)["kl_ab"] < before


# -- the package ------------------------------------------------------------------------------


def test_import_compresslab_stays_light_and_train_is_both():
    code = ("import sys, compresslab; assert 'torch' not in sys.modules; "
            "from compresslab.train import Recipe; import compresslab.train as t; "
            "assert callable(compresslab.train) and t is compresslab.train and t.Recipe is Recipe; "
            "assert compresslab.compare.__module__ == 'compresslab.live'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert compresslab.train.fit is not None  # still the training package


def test_the_readme_example_runs():
    """The README's five lines, on a digits MLP teacher and a smaller student."""
    block = re.search(r"```python\n(import compresslab\n.*?)```", (DOCS.parent.parent / "README.md").read_text(), re.S)
    assert block and len(block.group(1).strip().splitlines()) == 5
    torch.manual_seed(0)
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    mlp = lambda width: nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    namespace = {"teacher": mlp(64), "student": mlp(16), "x": x, "y": y, "x_test": x[:64], "y_test": y[:64]}
    exec(compile(block.group(1).replace('"epochs": 10', '"epochs": 1'), "README.md", "exec"), namespace)
    int8 = namespace["int8"]
    assert any("quantized" in type(m).__module__ for m in int8.modules())  # int8 Linear layers
    assert int8(x[:4]).shape == (4, 10)


@pytest.mark.slow
def test_the_documented_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 5
    out, namespace = io.StringIO(), {"__name__": "docs"}
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOCS.name} block {i + 1}", "exec"), namespace)
    text = out.getvalue()
    for figure in ("'agreement'", "'kl_ab'", "'p_star'", "'macs'", "'latency_ms'", "'tokens'",
                   "'layer1~layer0'", "after distillation", "'token_type_ids'"):
        assert figure in text, figure
