"""Text datasets (``conll:``, ``jsonl:``, ``hf-disk:``): encodings checked by hand, the word
vocabulary's order, word-piece label alignment, truncation notes, and line numbers in errors."""
import json

import pytest
import torch

from compresslab.cli import main
from compresslab.data import list_datasets, load_dataset
from compresslab.data.core import IGNORE_INDEX
from compresslab.data.text import word_vocab
from compresslab.errors import UserError

X = IGNORE_INDEX

TRAIN = """-DOCSTART- -X- -X- O

John NNP B-PER
lives VBZ O
in IN O
New NNP B-LOC
York NNP I-LOC

Mary NNP B-PER
runs VBZ O
"""
DEV = "John B-PER\nruns O\n"
TEST = "Mary B-PER\nlives O\nin O\nParis B-LOC\n"
LABELS = ["O", "B-LOC", "B-PER", "I-LOC"]


def conll(tmp_path, train=TRAIN, dev=DEV, test=TEST):
    d = tmp_path / "ner"
    d.mkdir(parents=True)
    (d / "train.txt").write_text(train)
    if dev is not None:
        (d / "dev.txt").write_text(dev)
    if test is not None:
        (d / "test.txt").write_text(test)
    return d


@pytest.fixture
def tokenizer_dir(tmp_path):
    """A tiny lower-casing word-piece tokenizer saved like a Hugging Face model directory."""
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "john", "lives", "in", "new", "york", "mary", "runs",
             "par", "##is", "good", "bad"]
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(str(tmp_path / "tok"))
    return tmp_path / "tok"


def test_registry_names():
    assert {"conll:DIR", "jsonl:FILE", "hf-disk:DIR", "imagefolder:DIR"} <= set(list_datasets())


def test_word_vocab_order():
    sentences = [["the", "cat", "a"], ["a", "the", "dog"], ["the", "cat", "The"]]
    # by frequency, ties alphabetically ("a" before "cat"; "The" < "dog" < ...), case kept
    assert word_vocab(sentences) == ["[PAD]", "[UNK]", "the", "a", "cat", "The", "dog"]
    assert word_vocab(sentences, min_freq=2) == ["[PAD]", "[UNK]", "the", "a", "cat"]


def test_conll_word_level_by_hand(tmp_path):
    ds = load_dataset(f"conll:{conll(tmp_path)}", val_fraction=0.5)
    vocab = ["[PAD]", "[UNK]", "John", "Mary", "New", "York", "in", "lives", "runs"]
    assert ds.text == {"level": "token", "pad_id": 0, "vocab_size": 9, "tokenizer": "word", "labels": LABELS,
                       "max_len": 5, "vocab": vocab}
    assert ds.token_level and ds.num_classes == 4 and ds.notes == []
    assert ds.sizes() == {"train": 2, "val": 1, "test": 1}  # dev.txt is the validation split: nothing carved
    assert ds.x_train.dtype == torch.int64  # token ids, not standardised
    assert ds.x_train.tolist() == [[2, 7, 6, 4, 5], [3, 8, 0, 0, 0]]
    assert ds.y_train.tolist() == [[2, 0, 0, 1, 3], [2, 0, X, X, X]]
    assert ds.x_val.tolist() == [[2, 8, 0, 0, 0]] and ds.y_val.tolist() == [[2, 0, X, X, X]]
    assert ds.x_test.tolist() == [[3, 7, 6, 1, 0]]  # Paris is unknown: [UNK] = 1
    assert ds.y_test.tolist() == [[2, 0, 0, 1, X]]


def test_conll_wordpiece_alignment_by_hand(tmp_path, tokenizer_dir):
    ds = load_dataset(f"conll:{conll(tmp_path)}?tokenizer=hf:{tokenizer_dir}", val_fraction=0.5)
    # [CLS]=2 [SEP]=3 [PAD]=0; the longest train sentence is 5 words + 2 specials = 7
    assert ds.text == {"level": "token", "pad_id": 0, "vocab_size": 16, "tokenizer": f"hf:{tokenizer_dir}",
                       "labels": LABELS, "max_len": 7}
    assert ds.x_train.tolist() == [[2, 5, 6, 7, 8, 9, 3], [2, 10, 11, 3, 0, 0, 0]]
    assert ds.y_train.tolist() == [[X, 2, 0, 0, 1, 3, X], [X, 2, 0, X, X, X, X]]
    # "Paris" -> par ##is: the label on "par", -100 on "##is"
    assert ds.x_test.tolist() == [[2, 10, 6, 7, 12, 13, 3]]
    assert ds.y_test.tolist() == [[X, 2, 0, 0, 1, X, X]]


def test_truncation_is_counted_in_notes(tmp_path, tokenizer_dir):
    ds = load_dataset(f"conll:{conll(tmp_path)}?max_len=3", val_fraction=0.5)
    assert ds.text["max_len"] == 3 and ds.x_train.shape == (2, 3)
    assert ds.y_train.tolist() == [[2, 0, 0], [2, 0, X]]
    assert ds.notes == ["truncated 2 of 4 sentences to max_len 3 tokens (train 1, val 0, test 1); "
                        "their tokens past it are not scored"]
    hf = load_dataset(f"conll:{conll(tmp_path / 'b')}?tokenizer={tokenizer_dir}&max_len=4", val_fraction=0.5)
    assert hf.x_train.tolist() == [[2, 5, 6, 3], [2, 10, 11, 3]]
    assert hf.y_train.tolist() == [[X, 2, 0, X], [X, 2, 0, X]]
    assert hf.notes[0].startswith("truncated 2 of 4 sentences to max_len 4 tokens (train 1, val 0, test 1)")


def test_conll_without_test_file_carves_one(tmp_path):
    train = "\n\n".join(f"w{i} O\nx B-A" for i in range(10)) + "\n"
    ds = load_dataset(f"conll:{conll(tmp_path, train=train, dev=None, test=None)}", val_fraction=0.25, seed=1)
    assert ds.sizes() == {"train": 6, "val": 2, "test": 2}
    assert ds.notes == [f"no test split in {tmp_path / 'ner'}: test split (2 examples) carved from train with seed 1"]


@pytest.mark.parametrize("train, where, words", [
    (TRAIN.replace("lives VBZ O", "lives"), "train.txt:4:", "expected 'TOKEN ... TAG' (at least 2 columns)"),
    (TRAIN.replace("runs VBZ O", "runs VBZ X-PER"), "train.txt:10:", "tag 'X-PER' is not O, B-TYPE or I-TYPE"),
])
def test_malformed_conll_line_through_the_cli(tmp_path, capsys, train, where, words):
    d = conll(tmp_path, train=train)
    code = main(["train", "-m", "mlp", "--data", f"conll:{d}", "--epochs", "1", "--runs", str(tmp_path / "runs"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{d / where}" in err and words in err
    assert not (tmp_path / "runs").exists() or not any(p.name.startswith("train-") for p in (tmp_path / "runs").iterdir())


def test_jsonl_file_and_options(tmp_path):
    rows = [{"review": f"good {i}" if i % 2 else f"bad bad {i}", "stars": i % 2} for i in range(10)]
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(f"jsonl:{f}?text=review&label=stars&min_freq=2", val_fraction=0.25)
    assert ds.sizes() == {"train": 6, "val": 2, "test": 2} and not ds.token_level
    assert ds.text["level"] == "sequence" and ds.text["labels"] == ["0", "1"] and ds.num_classes == 2
    assert ds.text["vocab"] == ["[PAD]", "[UNK]", "bad", "good"]  # digits appear once: below min_freq
    assert ds.text["max_len"] == 3 and ds.y_train.shape == (6,)
    assert ds.notes == [f"no test split in {f}: test split (2 examples) carved from train with seed 0"]
    for x, y in zip(ds.x_train.tolist(), ds.y_train.tolist()):
        assert x == ([3, 1, 0] if y == 1 else [2, 2, 1])


def test_jsonl_dir_with_string_labels_and_tokenizer(tmp_path, tokenizer_dir):
    d = tmp_path / "cls"
    d.mkdir()
    for name, rows in (("train", [("good", "pos"), ("bad bad", "neg")]), ("dev", [("bad", "neg")]),
                       ("test", [("good john", "pos")])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    ds = load_dataset(f"jsonl:{d}?tokenizer={tokenizer_dir}")
    assert ds.text["labels"] == ["neg", "pos"] and ds.text["max_len"] == 4 and "vocab" not in ds.text
    assert ds.x_train.tolist() == [[2, 14, 3, 0], [2, 15, 15, 3]] and ds.y_train.tolist() == [1, 0]
    assert ds.x_val.tolist() == [[2, 15, 3, 0]] and ds.x_test.tolist() == [[2, 14, 5, 3]]


@pytest.mark.parametrize("lines, words", [
    (['{"text": "a", "label": 1}', '{"text": "b", "label": 0', ], "r.jsonl:2: not a JSON object"),
    (['{"text": "a", "label": 1}', '', '{"text": "b", "label": "x"}'], "r.jsonl:3: label 'x' is a str but"),
    (['{"text": "a", "labels": 1}'], "r.jsonl:1: no field 'label' (fields: text, labels); name the field with ?label="),
    (['{"text": "a", "label": 1.5}'], "r.jsonl:1: field 'label' must be a string or an integer"),
])
def test_jsonl_errors_give_the_line(tmp_path, lines, words):
    f = tmp_path / "r.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        load_dataset(f"jsonl:{f}")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_hf_disk_token_and_sequence(tmp_path, tokenizer_dir):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                               "ner_tags": datasets.List(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    train = datasets.Dataset.from_dict({"tokens": [["Mary", "runs"], ["John", "lives", "in"]],
                                        "ner_tags": [[1, 0], [1, 0, 0]]}, features=feats)
    datasets.DatasetDict({"train": train, "validation": train.select([0]),
                          "test": train.select([1])}).save_to_disk(str(tmp_path / "ner"))
    ds = load_dataset(f"hf-disk:{tmp_path / 'ner'}?tokenizer={tokenizer_dir}")
    assert ds.text["labels"] == ["O", "B-PER", "I-PER"] and ds.sizes() == {"train": 2, "val": 1, "test": 1}
    assert ds.x_train.tolist() == [[2, 10, 11, 3, 0], [2, 5, 6, 7, 3]]
    assert ds.y_train.tolist() == [[X, 1, 0, X, X], [X, 1, 0, 0, X]]

    seq = datasets.Dataset.from_dict({"sentence": ["good", "bad", "good good", "bad"] * 3, "y": [1, 0, 1, 0] * 3})
    seq.save_to_disk(str(tmp_path / "seq"))
    s = load_dataset(f"hf-disk:{tmp_path / 'seq'}?text=sentence&label=y", val_fraction=0.2)
    assert s.text["level"] == "sequence" and s.text["labels"] == ["0", "1"] and s.sizes()["test"] == 2
    assert s.text["vocab"] == ["[PAD]", "[UNK]", "good", "bad"]
    with pytest.raises(UserError, match="no column 'text'"):
        load_dataset(f"hf-disk:{tmp_path / 'seq'}")


def test_subset_keeps_text_meta_and_validation(tmp_path):
    train = "\n\n".join(f"w{i} O\nx B-A" for i in range(10)) + "\n"
    ds = load_dataset(f"conll:{conll(tmp_path, train=train, dev=train, test=train)}@3")
    assert ds.sizes() == {"train": 3, "val": 3, "test": 3} and ds.text["labels"] == ["O", "B-A"]


@pytest.mark.parametrize("name, words", [
    ("conll:{d}?maxlen=4", "unknown option 'maxlen'; conll accepts tokenizer, max_len, min_freq"),
    ("conll:{d}?max_len=0", "max_len=0 must be at least 1"),
    ("conll:{d}?tokenizer={d}/none", "is not a local directory"),
    ("mnist1d?x=1", "takes no options"),
])
def test_option_errors(tmp_path, name, words):
    d = conll(tmp_path)
    with pytest.raises(UserError) as e:
        load_dataset(name.format(d=d))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_hf_disk_text_refuses_image_options_and_tiny_max_len(tmp_path, tokenizer_dir):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["good", "bad"] * 4, "label": [1, 0] * 4}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(UserError, match="option size applies to image data only"):
        load_dataset(f"hf-disk:{tmp_path / 's'}?size=8")
    with pytest.raises(UserError, match="max_len=2 leaves no room for the tokenizer's special tokens"):
        load_dataset(f"hf-disk:{tmp_path / 's'}?tokenizer={tokenizer_dir}&max_len=2")
