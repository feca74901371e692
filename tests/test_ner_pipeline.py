"""The synthetic-NER pipeline: generators (template, an OpenAI-compatible stub server, a tiny
local GPT-2), annotate, verify (review change counts), CoNLL round trips and bad inputs."""
from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from compresslab import ner
from compresslab.cli import main
from compresslab.data import ner_synth
from compresslab.data.ner_synth import (
    ENTITY_TYPES,
    SPECIES_CLASSES,
    Sentence,
    gazetteer,
    make_generator,
    parse_marked,
    parse_reply,
    read_conll,
    species_names,
)
from compresslab.errors import UserError
from compresslab.measure.entities import entities


def spans_text(s: Sentence) -> list[tuple[str, str]]:
    return [(t, " ".join(s.tokens[a:b + 1])) for t, a, b in entities(s.tags)]


# ---------------------------------------------------------------------------- template generator

def test_template_generator_is_deterministic_and_balanced():
    g = make_generator("template")
    a, b, c = g.generate(200, 3), g.generate(200, 3), g.generate(200, 4)
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert [s.tokens for s in a] != [s.tokens for s in c]
    assert [s.species_class for s in a[:8]] == list(SPECIES_CLASSES) * 2
    for s in a:
        assert len(s.tokens) == len(s.tags) and s.tokens
        assert sum(t == "SPECIES" for t, _ in spans_text(s)) == 1  # every sentence names one species


def test_gazetteer_coverage_and_spans_match_the_gazetteers():
    sentences = make_generator("template").generate(4000, 0)
    names = {c: {n for pair in species_names(c) for n in pair} for c in SPECIES_CLASSES}
    places = set(gazetteer("locations")) | {h for c in SPECIES_CLASSES for h in gazetteer(f"habitat-{c}")}
    seen_species: set[str] = set()
    seen_types: set[str] = set()
    for s in sentences:
        for typ, text in spans_text(s):
            seen_types.add(typ)
            cap = lambda x: x[:1].upper() + x[1:]  # a slot at the sentence start is capitalised
            norm = " ".join(ner_synth.tokenize(text))
            if typ == "SPECIES":
                assert norm in {" ".join(ner_synth.tokenize(n)) for n in names[s.species_class]}, norm
                seen_species.add(norm)
            elif typ == "HABITAT":
                assert norm in {" ".join(ner_synth.tokenize(p)) for p in places} | {
                    " ".join(ner_synth.tokenize(cap(p))) for p in places}, norm
            else:
                entries = gazetteer(f"{typ.lower()}-{s.species_class}")
                assert norm in {" ".join(ner_synth.tokenize(e)) for e in entries} | {
                    " ".join(ner_synth.tokenize(cap(e))) for e in entries}, norm
        for threat in gazetteer("threats"):  # threats are context: never inside an entity
            assert all(threat not in text for _, text in spans_text(s))
    assert seen_types == set(ENTITY_TYPES)
    commons = {" ".join(ner_synth.tokenize(c)) for cls in SPECIES_CLASSES for c, _ in species_names(cls)}
    assert commons <= seen_species  # every common name of every class was used
    total = sum(len(gazetteer(n)) for n in ["locations", "threats"] + [f"{k}-{c}" for c in SPECIES_CLASSES for k in
                                                                      ("species", "habitat", "feeding", "breeding")])
    assert total >= 250


def test_marked_round_trip_and_reply_parsing():
    for s in make_generator("template").generate(50, 1):
        back = parse_marked(s.marked())
        assert (back.tokens, back.tags) == (s.tokens, s.tags)
    reply = ("Here are two sentences:\n"
             "1. <SPECIES>Kakapo</SPECIES> eat <FEEDING>fruit</FEEDING> .\n"
             "- <SPECIES>Olm</SPECIES> live in <HABITAT>limestone caves</HABITAT>\n"
             "3. <SPECIES>Olm</SPECIES> live in <HABITAT>caves\n"          # unbalanced: skipped
             "<PLANT>Oak</PLANT> grows .\n")                                 # unknown type: skipped
    got, skipped = parse_reply(reply)
    assert skipped == 3
    assert [(s.tokens, s.tags) for s in got] == [
        (["Kakapo", "eat", "fruit", "."], ["B-SPECIES", "O", "B-FEEDING", "O"]),
        (["Olm", "live", "in", "limestone", "caves"], ["B-SPECIES", "O", "O", "B-HABITAT", "I-HABITAT"])]


# ---------------------------------------------------------------------------- an OpenAI-compatible stub

class _Stub(BaseHTTPRequestHandler):
    requests: list = []
    status = 200

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if type(self).status != 200:
            self.send_error(type(self).status)
            return
        k = len(type(self).requests)
        content = (f"Sure! Sentences:\n1. <SPECIES>Axolotl</SPECIES> live in <HABITAT>lake {k}</HABITAT> .\n"
                   "2. The <SPECIES>Kagu</SPECIES> breeds by <BREEDING>laying a single egg</BREEDING> .\n")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    _Stub.requests, _Stub.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_http_generator_against_a_stub_server(stub_server, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Write {n} sentences about {species_class}.\n<SPECIES>Olm</SPECIES> live in caves .\n")
    info = ner.generate(f"{stub_server}?model=stub-llm", 5, seed=7, out=tmp_path / "c", prompt=prompt)
    assert info["sentences"] == 5 and info["requests"] == 3 and info["skipped_lines"] == 3
    paths = {p for p, _ in _Stub.requests}
    assert paths == {"/v1/chat/completions"}
    bodies = [b for _, b in _Stub.requests]
    assert [b["model"] for b in bodies] == ["stub-llm"] * 3
    assert [b["seed"] for b in bodies] == [7, 8, 9]
    asked = [b["messages"][0]["content"].splitlines()[0] for b in bodies]
    assert asked == ["Write 5 sentences about amphibians.", "Write 3 sentences about arthropods.",
                     "Write 1 sentences about birds."]
    corpus = ner_synth.read_jsonl(tmp_path / "c" / "corpus.jsonl")
    assert corpus[0].tags == ["B-SPECIES", "O", "O", "B-HABITAT", "I-HABITAT", "O"]
    assert corpus[1].tokens[:2] == ["The", "Kagu"] and corpus[2].tokens[-2] == "2"  # lake 2: the second reply
    assert [s.species_class for s in corpus] == ["amphibians", "amphibians", "arthropods", "arthropods", "birds"]


def test_http_generator_errors_are_one_line(stub_server, tmp_path, capsys):
    _Stub.status = 500
    assert main(["ner", "generate", "-g", stub_server, "-n", "3", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "HTTP 500" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()
    dead = stub_server.rsplit(":", 1)[0] + ":9/v1"  # the discard port: nothing listens
    assert main(["ner", "generate", "-g", dead, "-n", "3", "--out", str(tmp_path / "b")]) == 2
    assert "cannot reach" in capsys.readouterr().err


# ---------------------------------------------------------------------------- a tiny local GPT-2

def _tiny_lm(directory: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "[EOS]", "the", "frog", "lives", "in", "a", "pond", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]",
                                                pad_token="[EOS]")
    fast.save_pretrained(directory)
    config = transformers.GPT2Config(vocab_size=len(words), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=1, eos_token_id=1)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)


def test_hf_causal_lm_generator_plumbing(tmp_path):
    _tiny_lm(tmp_path / "lm")
    gen = make_generator(f"hf:{tmp_path / 'lm'}", "the frog lives in {n} {species_class} .")
    assert isinstance(gen, ner_synth.CausalLMGenerator)
    gen.max_new_tokens = 12
    text = gen.complete("the frog lives in a pond .", seed=0)
    assert text == gen.complete("the frog lives in a pond .", seed=0)  # seeded sampling
    assert text.split() and set(text.split()) <= {"the", "frog", "lives", "in", "a", "pond", ".", "[UNK]"}
    gen.require_entity = False  # its words hold no marks: take every line as a sentence
    got = gen.generate(3, seed=1)
    assert len(got) == 3 and all(len(s.tokens) == len(s.tags) for s in got)
    strict = make_generator(f"hf:{tmp_path / 'lm'}", "the frog lives in {n} {species_class} .")
    strict.max_new_tokens = 4
    with pytest.raises(UserError, match="gave 0 of 2 sentences in 5 requests"):
        strict.generate(2, seed=0)


def test_hf_generator_missing_directory(tmp_path, capsys):
    assert main(["ner", "generate", "-g", f"hf:{tmp_path / 'nope'}", "-n", "2", "--out", str(tmp_path / "o")]) == 2
    assert "huggingface-cli download" in capsys.readouterr().err


# ---------------------------------------------------------------------------- annotate, verify, evaluate

@pytest.fixture
def corpus(tmp_path):
    out = tmp_path / "run"
    assert main(["ner", "generate", "--sentences", "30", "--seed", "2", "--out", str(out), "--json"]) == 0
    assert main(["ner", "annotate", str(out), "--teacher", "spans", "--json"]) == 0
    return out


def _edit(path: Path, edits: dict[int, str]) -> Path:
    """A copy of a CoNLL file with the tags of some lines (1-based) replaced."""
    lines = path.read_text().splitlines()
    for no, tag in edits.items():
        lines[no - 1] = f"{lines[no - 1].split()[0]} {tag}"
    out = path.with_name("reviewed.conll")
    out.write_text("\n".join(lines) + "\n")
    return out


def test_verify_counts_the_review_changes_and_writes_gold(corpus, capsys):
    annotated = corpus / "annotated.conll"
    sentences, starts = read_conll(annotated)
    s0 = starts[0]
    # sentence 1: first tag to O and second to B-FEEDING; sentence 4: its last token (a '.') O -> B-HABITAT
    last = starts[3] + len(sentences[3].tokens) - 1
    edits = {s0: "O", s0 + 1: "B-FEEDING", last: "B-HABITAT"}
    unchanged = sum(sentences[0].tags[i] == t for i, t in ((0, "O"), (1, "B-FEEDING")))
    reviewed = _edit(annotated, edits)
    capsys.readouterr()
    assert main(["ner", "verify", str(corpus), "--corrected", str(reviewed), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["labels_changed"] == 3 - unchanged and r["sentences_changed"] == 2
    assert {c["line"] for c in r["changes"]} <= set(edits) and r["changes"][-1] == {
        "line": last, "token": sentences[3].tokens[-1], "before": "O", "after": "B-HABITAT"}
    assert r["teacher_vs_gold"]["micro"]["f1"] < 1.0
    assert sum(r["splits"].values()) == 30 and r["splits"]["train"] == 24
    # the gold splits hold exactly the reviewed sentences, and conll:DIR reads them
    gold = [s for name in ("train", "dev", "test") for s in read_conll(corpus / "gold" / f"{name}.txt")[0]]
    reviewed_s = read_conll(reviewed)[0]
    key = lambda s: (s.tokens, s.tags)
    assert sorted(map(key, gold)) == sorted(map(key, reviewed_s))
    from compresslab.data import load_dataset
    from compresslab.data.text import read_conll as text_read_conll

    assert [tuple(x) for x in text_read_conll(corpus / "gold" / "train.txt")] == \
        [key(s) for s in read_conll(corpus / "gold" / "train.txt")[0]]
    d = load_dataset(f"conll:{corpus / 'gold'}")
    assert d.token_level and d.sizes() == {"train": 24, "val": 3, "test": 3}
    assert "B-SPECIES" in d.text["labels"]


def test_verify_without_review_changes_nothing(corpus):
    r = ner.verify(corpus)
    assert r["labels_changed"] == 0 and r["sentences_changed"] == 0 and r["teacher_vs_gold"]["micro"]["f1"] == 1.0


def test_evaluate_a_predicted_file(corpus, capsys):
    ner.verify(corpus)
    test = corpus / "gold" / "test.txt"
    sentences, starts = read_conll(test)
    first = next(i for i, t in enumerate(sentences[0].tags) if t.startswith("B-"))
    pred = _edit(test, {starts[0] + first: "O"})  # one entity's first token dropped: a wrong span, or a miss
    capsys.readouterr()
    assert main(["ner", "evaluate", "--gold", str(test), "--pred", str(pred), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    n = r["micro"]["support"]
    assert r["micro"]["correct"] == n - 1 and r["micro"]["recall"] == pytest.approx((n - 1) / n)
    assert r["token_accuracy"] == pytest.approx(1 - 1 / r["tokens"])


def test_hf_token_classifier_teacher(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({t for s in ner_synth.read_jsonl(corpus / "corpus.jsonl") for t in s.tokens})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    d = tmp_path / "tagger"
    fast.save_pretrained(d)
    labels = ner_synth.LABELS
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, num_labels=len(labels),
                                  id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)})
    transformers.BertForTokenClassification(cfg).save_pretrained(d)
    r = ner.annotate(corpus, f"hf:{d}")
    sentences, _ = read_conll(corpus / "annotated.conll")
    assert r["sentences"] == 30 and all(set(s.tags) <= set(labels) for s in sentences)
    assert 0.0 <= r["f1_vs_generator_spans"] <= 1.0


# ---------------------------------------------------------------------------- bad inputs: one line, exit 2

def _fails(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err


def test_bad_inputs(corpus, tmp_path, capsys):
    annotated = corpus / "annotated.conll"
    lines = annotated.read_text().splitlines()
    bad = tmp_path / "bad.conll"
    bad.write_text("\n".join(lines[:4] + ["lonely"] + lines[5:]) + "\n")
    _fails(capsys, ["ner", "verify", str(corpus), "--corrected", str(bad)], f"{bad}:5:", "malformed")
    bad.write_text("\n".join(lines[:2] + [lines[2].split()[0] + " B-"] + lines[3:]) + "\n")
    _fails(capsys, ["ner", "verify", str(corpus), "--corrected", str(bad)], f"{bad}:3:")
    bad.write_text("\n".join(lines[:1] + [lines[1].split()[0] + " B-PLANT"] + lines[2:]) + "\n")
    _fails(capsys, ["ner", "verify", str(corpus), "--corrected", str(bad)], f"{bad}:2:", "unknown entity type")
    bad.write_text("\n".join(lines[:3] + ["changed " + lines[3].split()[1]] + lines[4:]) + "\n")
    _fails(capsys, ["ner", "verify", str(corpus), "--corrected", str(bad)], f"{bad}:4:", "change tags only")
    bad.write_text("\n".join(lines[:lines.index("")]) + "\n")
    _fails(capsys, ["ner", "verify", str(corpus), "--corrected", str(bad)], "1 sentences")
    assert not (corpus / "gold").exists()  # nothing written by a rejected review
    _fails(capsys, ["ner", "generate", "--out", str(corpus)], "already holds")
    _fails(capsys, ["ner", "generate", "-g", "gpt4", "--out", str(tmp_path / "x")], "--generator")
    _fails(capsys, ["ner", "annotate", str(tmp_path / "none")], "no corpus.jsonl")
    _fails(capsys, ["ner", "annotate", str(corpus), "--teacher", "nonsense"], "--teacher")
    _fails(capsys, ["ner", "evaluate", "--gold", str(annotated)], "exactly one")
    _fails(capsys, ["ner", "evaluate", "--gold", str(annotated), "--pred", str(tmp_path / "missing.conll")],
           "not found")
    empty = tmp_path / "p.txt"
    empty.write_text("no placeholder\n")
    _fails(capsys, ["ner", "generate", "-g", "http://127.0.0.1:9/v1", "--prompt", str(empty), "--out",
                    str(tmp_path / "y")], "{n}")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_corpus_files_round_trip(tmp_path):
    s = make_generator("template").generate(12, 5)
    ner_synth.write_conll(tmp_path / "a.conll", s)
    back, starts = read_conll(tmp_path / "a.conll")
    assert [(x.tokens, x.tags) for x in back] == [(x.tokens, x.tags) for x in s]
    assert starts[0] == 1 and starts[1] == len(s[0].tokens) + 2
    ner_synth.write_jsonl(tmp_path / "a.jsonl", s)
    assert [x.to_json() for x in ner_synth.read_jsonl(tmp_path / "a.jsonl")] == [x.to_json() for x in s]
    shutil.copy(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write("{broken\n")
    with pytest.raises(UserError, match=r"b.jsonl:13:"):
        ner_synth.read_jsonl(tmp_path / "b.jsonl")


def test_checkpoint_teacher_tags_words_as_its_training_data_encodes_them(corpus, tmp_path, capsys):
    from compresslab.data import load_dataset
    from compresslab.runs.checkpoint import load_checkpoint

    pytest.importorskip("transformers")
    data = "ner-synthetic?sentences=60&seed=0&max_len=24"
    capsys.readouterr()
    assert main(["train", "-m", "bert", "-o", "hidden=8", "-o", "layers=1", "-o", "heads=2", "--data", data,
                 "--epochs", "1", "--runs", str(tmp_path / "runs"), "--quiet", "--json"]) == 0
    ckpt = json.loads(capsys.readouterr().out)["checkpoint"]
    r = ner.annotate(corpus, ckpt)  # the dataset comes from the step's spec.json
    assert r["teacher"] == ckpt
    got, _ = read_conll(corpus / "annotated.conll")
    text = load_dataset(data).text
    index = {w: i for i, w in enumerate(text["vocab"])}
    model, _ = load_checkpoint(ckpt)
    for s, tagged in zip(ner_synth.read_jsonl(corpus / "corpus.jsonl"), got):
        ids = [index.get(t, 1) for t in s.tokens][:24]
        with torch.no_grad():
            pred = model(torch.tensor([ids + [0] * (24 - len(ids))]))[0].argmax(-1)
        expected = [text["labels"][int(p)] for p in pred[:len(ids)]] + ["O"] * (len(s.tokens) - len(ids))
        assert tagged.tokens == s.tokens and tagged.tags == expected
    with pytest.raises(UserError, match="--data NAME"):
        shutil.copytree(ckpt, tmp_path / "bare", ignore=shutil.ignore_patterns("spec.json"))
        ner.annotate(corpus, str(tmp_path / "bare"))


def test_ner_synthetic_dataset_and_held_out_entities():
    from compresslab.data import load_dataset

    d = load_dataset("ner-synthetic?sentences=200&seed=3&max_len=24")
    t = d.text
    assert d.token_level and d.x_train.dtype == torch.int64 and t["tokenizer"] == "word"
    assert t["labels"] == ner_synth.LABELS and d.num_classes == 9 and t["vocab"][:2] == ["[PAD]", "[UNK]"]
    assert d.sizes() == {"train": 162, "val": 18, "test": 20}
    assert ((d.x_train == 0) == (d.y_train == -100)).all()  # padding is exactly the unscored positions
    # held out: no training sentence names a held-out entry, and test sentences do
    held = ner_synth.held_out(0.25, 3)
    names = {" ".join(ner_synth.tokenize(p)).lower() for h in held for p in h.split("|") if p.strip()}
    assert len(held) == sum(max(1, round(0.25 * len(gazetteer(n)))) for n in ner_synth.ENTITY_GAZETTEERS)
    train = ner_synth.TemplateGenerator(exclude=held).generate(400, 3)
    assert not any(text.lower() in names for s in train for _, text in spans_text(s))
    test = ner_synth.TemplateGenerator().generate(100, 4)
    assert any(text.lower() in names for s in test for _, text in spans_text(s))
    u = load_dataset("ner-synthetic?sentences=200&seed=3&max_len=24&unseen=0.25")
    assert "held out of training" in u.notes[-1] and u.sizes()["test"] == 20
    vocab = set(u.text["vocab"])
    held_words = {w for n in names for w in n.split()} - {w.lower() for w in vocab}
    assert held_words  # words only held-out entries use never reach the training vocabulary
    with pytest.raises(UserError, match="unknown option 'sentence'"):
        ner_synth.ner_synthetic_options({"sentence": "5"})
    with pytest.raises(UserError, match="unseen"):
        load_dataset("ner-synthetic?unseen=0.9")


def test_hf_teacher_without_bio_labels_is_rejected(corpus, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    d = tmp_path / "plain"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(d)
    cfg = transformers.BertConfig(vocab_size=2, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, num_labels=3)  # LABEL_0, LABEL_1, LABEL_2
    transformers.BertForTokenClassification(cfg).save_pretrained(d)
    before = (corpus / "annotated.conll").read_text()
    _fails(capsys, ["ner", "annotate", str(corpus), "--teacher", f"hf:{d}"], "not BIO tags", "LABEL_0")
    assert (corpus / "annotated.conll").read_text() == before
