"""``compresslab ner``: NER distilled from a teacher-labelled synthetic corpus, stage by stage.

One directory holds a corpus through its stages (Atuhurra et al. 2024's pipeline, with the
LLM pluggable and a reviewer in the loop):

1. :func:`generate` -> ``corpus.jsonl`` (sentences, tokens and the generator's own tags) and
   ``generate.json``;
2. :func:`annotate` -> ``annotated.conll``: the teacher's labels, one ``token TAG`` a line,
   for people to review. The teacher is the generator's spans (``spans``), a Hugging Face
   token classifier (``hf:DIR``) or a compresslab checkpoint directory;
3. :func:`verify` reads the reviewed copy back as gold, counts the labels and sentences the
   review changed, and writes ``gold/{train,dev,test}.txt``: ``--data conll:DIR/gold`` for
   ``compresslab train`` and ``distill``;
4. fine-tuning is ``compresslab train -m bert --data conll:DIR/gold`` (or ``-m hf:DIR``);
5. :func:`evaluate`: entity-level precision, recall and F1 (exact spans, as seqeval's
   default mode; :mod:`compresslab.measure.entities`) of a predicted file or a checkpoint
   against a gold file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from compresslab.data import ner_synth
from compresslab.data.ner_synth import Sentence, read_conll, read_jsonl, write_conll, write_jsonl
from compresslab.errors import UserError
from compresslab.measure.entities import entities, entity_scores

CORPUS, ANNOTATED, GOLD = "corpus.jsonl", "annotated.conll", "gold"
SPLIT_FILES = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _replace_file(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def entity_counts(sentences: list[Sentence]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in sentences:
        for typ, _, _ in entities(s.tags):
            out[typ] = out.get(typ, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------- generate

def generate(generator: str = "template", sentences: int = 1800, seed: int = 0, out: str | Path = "ner-corpus",
             prompt: str | Path | None = None) -> dict:
    """Write ``sentences`` sentences from ``generator`` into ``out/corpus.jsonl`` (refused when
    ``out`` already holds a corpus), with ``out/generate.json`` describing the run."""
    if sentences < 1:
        raise UserError(f"--sentences {sentences}: must be at least 1")
    out = Path(out)
    if (out / CORPUS).exists():
        raise UserError(f"{out} already holds {CORPUS}; pass a new --out directory")
    if prompt is not None:
        try:
            prompt_text = Path(prompt).read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"--prompt {prompt}: cannot read ({e.strerror or e})") from None
        if "{n}" not in prompt_text:
            raise UserError(f"--prompt {prompt}: the template must contain {{n}} (the number of sentences asked for)")
    else:
        prompt_text = None
    gen = ner_synth.make_generator(generator, prompt_text)
    t0 = time.perf_counter()
    got = gen.generate(sentences, seed)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    _replace_file(out / CORPUS, lambda p: write_jsonl(p, got))
    classes: dict[str, int] = {}
    for s in got:
        classes[s.species_class or "?"] = classes.get(s.species_class or "?", 0) + 1
    info = {"directory": str(out), "corpus": str(out / CORPUS), "generator": generator, "seed": seed,
            "sentences": len(got), "tokens": sum(len(s.tokens) for s in got), "classes": classes,
            "entities": entity_counts(got), "prompt": str(prompt) if prompt else None,
            "skipped_lines": getattr(gen, "skipped", 0), "requests": getattr(gen, "requests", None),
            "seconds": round(seconds, 3), "example": got[0].marked() if got else ""}
    _write_json(out / "generate.json", info)
    return info


def _corpus(directory: Path) -> list[Sentence]:
    path = Path(directory) / CORPUS
    if not path.is_file():
        raise UserError(f"{directory}: no {CORPUS}; run `compresslab ner generate --out {directory}` first")
    return read_jsonl(path)


# ---------------------------------------------------------------------------- teachers

def _hf_predict(directory: str, sentences: list[Sentence], batch_size: int) -> list[list[str]]:
    """Tags from a local Hugging Face token classifier: each word's first sub-token's argmax."""
    import torch

    try:
        from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer
    except ImportError as e:
        raise UserError(f"--teacher hf:DIR needs transformers ({e}); pip install 'compresslab[hf]'") from None
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"--teacher hf:{directory}: no such directory; download the model with "
                        "`huggingface-cli download NAME --local-dir DIR` on a connected machine and pass hf:DIR")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        names = [config.id2label[i] for i in range(config.num_labels)]
        bad = [n for n in names if not ner_synth.is_tag(n)]
        if bad:  # checked before the weights load
            raise UserError(f"hf:{directory}: its labels {bad[:3]} are not BIO tags (O, B-TYPE, I-TYPE); set the "
                            "config's id2label to the tag names")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForTokenClassification.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"hf:{directory} is not a token-classification model with a tokenizer: "
                        f"{str(e).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"hf:{directory}: a fast tokenizer (tokenizer.json) is needed to align tags to words")
    limit = min(getattr(tok, "model_max_length", 512) or 512, 512)
    out: list[list[str]] = []
    for i in range(0, len(sentences), batch_size):
        batch = sentences[i:i + batch_size]
        enc = tok([s.tokens for s in batch], is_split_into_words=True, truncation=True, max_length=limit,
                  padding=True, return_tensors="pt")
        with torch.no_grad():
            pred = model(**enc).logits.argmax(-1)
        for k, s in enumerate(batch):
            tags = ["O"] * len(s.tokens)
            seen = set()
            for pos, word in enumerate(enc.word_ids(k)):
                if word is not None and word not in seen:
                    seen.add(word)
                    tags[word] = names[int(pred[k, pos])]
            out.append(tags)
    return out


def _checkpoint_data(checkpoint: Path, data: str | None) -> str:
    """The dataset a checkpoint was trained on: ``data``, else its store step's spec.json."""
    if data:
        return data
    spec = Path(checkpoint) / "spec.json"
    if spec.is_file():
        d = json.loads(spec.read_text()).get("spec", {}).get("data")
        if isinstance(d, dict) and d.get("name"):
            return d["name"]
    raise UserError(f"{checkpoint}: name the dataset it was trained on with --data NAME (its vocabulary and tag names)")


def _checkpoint_predict(checkpoint: Path, sentences: list[Sentence], data: str | None) -> list[list[str]]:
    """Tags from a compresslab token classifier, encoding words as its training data did."""
    import torch

    from compresslab.data import load_dataset
    from compresslab.data.text import Encoder, hf_tokenizer
    from compresslab.steps.common import load_model
    from compresslab.train import evaluate_logits

    name = _checkpoint_data(checkpoint, data)
    text = load_dataset(name).text
    if not text or text.get("level") != "token":
        raise UserError(f"dataset {name} is not token-level text data; a NER teacher is trained on conll:DIR, "
                        "ner-synthetic or a token-level hf-disk:DIR")
    if text["tokenizer"] == "word":
        encoder = Encoder(None, list(text["vocab"]), int(text["pad_id"]), "word")
    else:
        encoder = Encoder(hf_tokenizer(text["tokenizer"], f"dataset {name}")[0], None, int(text["pad_id"]),
                          text["tokenizer"])
    labels = list(text["labels"])
    if "O" not in labels:
        raise UserError(f"dataset {name}: its tags {labels[:5]} have no 'O'; it is not a BIO-tagged NER set")
    x, y = encoder.encode([(s.tokens, ["O"] * len(s.tokens)) for s in sentences], labels, int(text["max_len"]), True)
    model = load_model(Path(checkpoint))
    logits = evaluate_logits(model, torch.from_numpy(x))
    if logits.ndim != 3:
        raise UserError(f"{checkpoint} is not a token classifier: its outputs have shape {tuple(logits.shape)}, "
                        "not (N, L, tags)")
    pred = logits.argmax(-1).numpy()
    out = []
    for i, s in enumerate(sentences):
        scored = [int(p) for p, keep in zip(pred[i], y[i] != -100) if keep]  # each word's first token
        tags = [labels[p] for p in scored] + ["O"] * (len(s.tokens) - len(scored))  # words past max_len: O
        out.append(tags)
    return out


def predict_tags(teacher: str, sentences: list[Sentence], *, data: str | None = None,
                 batch_size: int = 64) -> list[list[str]]:
    """BIO tags for every sentence from ``teacher``: ``spans`` (the generator's own tags),
    ``hf:DIR`` or a compresslab checkpoint directory (``data``: the dataset it was trained on,
    default: the one its store step names)."""
    if teacher == "spans":
        return [list(s.tags) for s in sentences]
    if teacher.startswith("hf:"):
        return _hf_predict(teacher[3:], sentences, batch_size)
    path = Path(teacher)
    if (path / "model.json").is_file():
        return _checkpoint_predict(path, sentences, data)
    raise UserError(f"--teacher {teacher!r}: use spans, hf:DIR (a token-classification model directory) or a "
                    "compresslab checkpoint directory (holding model.json)")


# ---------------------------------------------------------------------------- annotate

def annotate(directory: str | Path, teacher: str = "spans", *, data: str | None = None) -> dict:
    """Label the corpus in ``directory`` with ``teacher`` and write ``annotated.conll`` (the
    file to review). Reports the entities per type and how the teacher's entities agree
    with the generator's own spans (entity F1)."""
    directory = Path(directory)
    corpus = _corpus(directory)
    t0 = time.perf_counter()
    tags = predict_tags(teacher, corpus, data=data)
    labelled = [Sentence(s.tokens, t, s.species_class, s.source) for s, t in zip(corpus, tags)]
    _replace_file(directory / ANNOTATED, lambda p: write_conll(p, labelled))
    vs = entity_scores([s.tags for s in corpus], tags)
    info = {"directory": str(directory), "annotated": str(directory / ANNOTATED), "teacher": teacher,
            "sentences": len(labelled), "tokens": sum(len(s.tokens) for s in labelled),
            "entities": entity_counts(labelled), "f1_vs_generator_spans": vs["micro"]["f1"],
            "seconds": round(time.perf_counter() - t0, 3)}
    _write_json(directory / "annotate.json", info)
    return info


# ---------------------------------------------------------------------------- verify

def compare_reviewed(annotated: list[Sentence], corrected: list[Sentence], corrected_starts: list[int], where: str) -> dict:
    """What the review changed: labels (tokens whose tag differs), sentences with a change,
    and the first changes with their line numbers in the reviewed file. The reviewed file
    must keep every sentence and token: a difference is a :class:`UserError` naming the line."""
    if len(corrected) != len(annotated):
        raise UserError(f"{where}: {len(corrected)} sentences, but the annotated file has {len(annotated)}; "
                        "change tags only (keep every sentence and its blank line)")
    changed = sentences_changed = 0
    examples = []
    for k, (a, c) in enumerate(zip(annotated, corrected)):
        if a.tokens != c.tokens:
            j = next((j for j, (x, y) in enumerate(zip(a.tokens, c.tokens)) if x != y), min(len(a.tokens), len(c.tokens)))
            raise UserError(f"{where}:{corrected_starts[k] + j}: sentence {k + 1} differs from the annotated one in its "
                            f"tokens (token {j + 1}); change tags only")
        diff = [j for j, (x, y) in enumerate(zip(a.tags, c.tags)) if x != y]
        changed += len(diff)
        sentences_changed += bool(diff)
        for j in diff[:max(0, 10 - len(examples))]:
            examples.append({"line": corrected_starts[k] + j, "token": a.tokens[j], "before": a.tags[j],
                             "after": c.tags[j]})
    return {"labels_changed": changed, "sentences_changed": sentences_changed, "changes": examples}


def verify(directory: str | Path, corrected: str | Path | None = None, *, seed: int | None = None) -> dict:
    """Read the reviewed labels (``corrected``, default: ``annotated.conll`` as it is) as gold:
    count what the review changed against ``annotated.conll``, score the teacher against the
    gold (entity F1), and write ``gold/train.txt``, ``dev.txt`` and ``test.txt`` (80/10/10,
    split with ``seed``, default: the generation seed) plus ``verify.json``."""
    directory = Path(directory)
    ann_path = directory / ANNOTATED
    if not ann_path.is_file():
        raise UserError(f"{directory}: no {ANNOTATED}; run `compresslab ner annotate {directory}` first")
    annotated, _ = read_conll(ann_path)
    reviewed_path = Path(corrected) if corrected is not None else ann_path
    reviewed, reviewed_starts = read_conll(reviewed_path)
    types = set(ner_synth.ENTITY_TYPES) | {t.partition("-")[2] for s in annotated for t in s.tags if t != "O"}
    for k, s in enumerate(reviewed):
        for j, tag in enumerate(s.tags):
            if tag != "O" and tag.partition("-")[2] not in types:
                raise UserError(f"{reviewed_path}:{reviewed_starts[k] + j}: unknown entity type in {tag!r}; "
                                f"use one of {', '.join(sorted(types))}")
    change = compare_reviewed(annotated, reviewed, reviewed_starts, str(reviewed_path))
    teacher = entity_scores([s.tags for s in reviewed], [s.tags for s in annotated])
    if seed is None:
        gen = directory / "generate.json"
        seed = json.loads(gen.read_text()).get("seed", 0) if gen.is_file() else 0
    parts = ner_synth.split_indices(len(reviewed), seed)
    if min(len(v) for v in parts.values()) == 0:
        raise UserError(f"{reviewed_path}: {len(reviewed)} sentences are too few for train/dev/test; generate at least 10")
    gold = directory / GOLD
    tmp = Path(tempfile.mkdtemp(prefix=".gold-", dir=directory))
    try:
        for split, idx in parts.items():
            write_conll(tmp / SPLIT_FILES[split], [reviewed[i] for i in idx])
        if gold.exists():
            shutil.rmtree(gold)
        os.replace(tmp, gold)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {"directory": str(directory), "reviewed": str(reviewed_path), "sentences": len(reviewed),
            "tokens": sum(len(s.tokens) for s in reviewed), **change,
            "teacher_vs_gold": {"micro": teacher["micro"], "per_type": teacher["per_type"]},
            "gold": str(gold), "splits": {k: len(v) for k, v in parts.items()}, "seed": seed,
            "data": f"conll:{gold}"}
    _write_json(directory / "verify.json", info)
    return info


# ---------------------------------------------------------------------------- evaluate

def evaluate(gold: str | Path, pred: str | Path | None = None, *, checkpoint: str | Path | None = None,
             data: str | None = None) -> dict:
    """Entity-level precision, recall and F1 (per type, micro and macro) of ``pred`` (a CoNLL
    file with the same sentences) or of ``checkpoint``'s tags on ``gold``'s sentences."""
    if (pred is None) == (checkpoint is None):
        raise UserError("give exactly one of --pred FILE and --checkpoint DIR")
    gold_s, _ = read_conll(Path(gold))
    if not gold_s:
        raise UserError(f"{gold}: no sentences")
    t0 = time.perf_counter()
    if pred is not None:
        pred_s, pred_starts = read_conll(Path(pred))
        if len(pred_s) != len(gold_s):
            raise UserError(f"{pred}: {len(pred_s)} sentences, but {gold} has {len(gold_s)}; predict the same sentences")
        for k, (g, p) in enumerate(zip(gold_s, pred_s)):
            if g.tokens != p.tokens:
                raise UserError(f"{pred}:{pred_starts[k]}: sentence {k + 1} has other tokens than in {gold}")
        tags = [p.tags for p in pred_s]
        source = {"pred": str(pred)}
    else:
        tags = predict_tags(str(checkpoint), gold_s, data=data)
        source = {"checkpoint": str(checkpoint)}
    scores = entity_scores([g.tags for g in gold_s], tags)
    tokens = sum(len(g.tokens) for g in gold_s)
    correct = sum(a == b for g, t in zip(gold_s, tags) for a, b in zip(g.tags, t))
    return {"gold": str(gold), **source, "sentences": len(gold_s), "tokens": tokens,
            "token_accuracy": correct / tokens if tokens else 0.0, **{k: scores[k] for k in ("micro", "macro", "per_type")},
            "seconds": round(time.perf_counter() - t0, 3)}
