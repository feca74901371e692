"""Text datasets: ``conll:DIR``, ``jsonl:FILE|DIR`` and ``hf-disk:DIR``, as token ids.

A text dataset's inputs are int64 token ids ``(N, L)`` padded with ``pad_id`` to the
dataset's ``max_len`` L, never standardised. Token-level tasks (NER: ``conll:``, an
``hf-disk:`` set with ``tokens`` and ``ner_tags``) have labels ``(N, L)`` holding
:data:`~compresslab.data.core.IGNORE_INDEX` (-100) wherever nothing is scored: padding,
special tokens and every sub-token but a word's first. Sequence classification
(``jsonl:``, an ``hf-disk:`` set with ``text`` and ``label``) has labels ``(N,)``.
``meta["text"]`` describes the encoding (:attr:`compresslab.data.core.Dataset.text`).

Tokenisation, chosen by the ``tokenizer=`` option:

- ``tokenizer=DIR`` (or ``hf:DIR``): a local Hugging Face tokenizer directory, loaded with
  ``AutoTokenizer.from_pretrained(DIR, local_files_only=True)``. For token-level data it
  must be a fast tokenizer (``tokenizer.json``): a word's label goes on its first
  sub-token (``word_ids()``), the rest get -100.
- none: a word-level vocabulary built from the training sentences: id 0 ``[PAD]``, id 1
  ``[UNK]``, then the words seen at least ``min_freq`` times (default 1), most frequent
  first, ties in alphabetical order; case is kept. A text is split into words at
  whitespace; no special tokens are added.

``max_len`` (default: the longest training sentence in tokens, at most
:data:`MAX_LEN_CAP`) fixes L; longer sentences are cut, and ``Dataset.notes`` says how
many per split.

Every problem with a file is a one-line :class:`UserError`, with ``FILE:LINE:`` where a
line is at fault.
"""
from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compresslab.data.core import IGNORE_INDEX
from compresslab.data.loaders import Raw, carve_test
from compresslab.errors import UserError

PAD, UNK = "[PAD]", "[UNK]"
MAX_LEN_CAP = 128
"""The default ``max_len`` is the longest training sentence, but at most this many tokens."""

CONLL_OPTIONS = ("tokenizer", "max_len", "min_freq")
JSONL_OPTIONS = ("text", "label", "tokenizer", "max_len", "min_freq")
HF_DISK_OPTIONS = ("text", "label", "tokenizer", "max_len", "min_freq", "size", "channels", "bad", "stream",
                   "workers")

#: a split's examples: token level ``[(words, tags)]``, sequence level ``[(text, label)]``
Examples = list[tuple]

_BIO = re.compile(r"(O|[BI]-\S+)")


# ----------------------------------------------------------------------------- options


def int_option(where: str, key: str, value: str | None, default: int | None, minimum: int = 1) -> int | None:
    """``value`` (an option's text) as an int of at least ``minimum``, or ``default`` when absent."""
    if value is None:
        return default
    try:
        out = int(value)
    except ValueError:
        raise UserError(f"{where}: option {key}={value!r} must be an integer") from None
    if out < minimum:
        raise UserError(f"{where}: option {key}={out} must be at least {minimum}")
    return out


# ----------------------------------------------------------------------------- readers


def read_conll(path: Path) -> Examples:
    """Sentences of a CoNLL-2003-style file as ``[(words, tags)]``.

    One token per line, the word in the first column and its tag in the last; a blank
    line ends a sentence; ``-DOCSTART-`` lines are skipped. A line with one column, or,
    in a file that uses BIO tags (some tag starts with ``B-`` or ``I-``), a tag that is
    not ``O``, ``B-TYPE`` or ``I-TYPE``, raises ``UserError("FILE:LINE: ...")``.
    """
    sentences: Examples = []
    words: list[str] = []
    tags: list[tuple[str, int]] = []
    every: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                cols = line.split()
                if not cols or cols[0] == "-DOCSTART-":
                    if words:
                        sentences.append((words, [t for t, _ in tags]))
                        every.extend(tags)
                    words, tags = [], []
                    continue
                if len(cols) < 2:
                    raise UserError(f"{path}:{no}: expected 'TOKEN ... TAG' (at least 2 columns), found "
                                    f"{line.strip()!r}; fix the line or separate sentences by a blank line")
                words.append(cols[0])
                tags.append((cols[-1], no))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if words:
        sentences.append((words, [t for t, _ in tags]))
        every.extend(tags)
    if any(t.startswith(("B-", "I-")) for t, _ in every):
        for tag, no in every:
            if not _BIO.fullmatch(tag):
                raise UserError(f"{path}:{no}: tag {tag!r} is not O, B-TYPE or I-TYPE "
                                "(the file uses BIO tags in its last column)")
    return sentences


def read_jsonl(path: Path, text_key: str = "text", label_key: str = "label") -> Examples:
    """``[(text, label)]`` from a file of one JSON object per line (blank lines skipped);
    ``label`` a string or an integer, the same kind on every line."""
    out: Examples = []
    kind: type | None = None
    try:
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{no}: not a JSON object ({e.msg} at column {e.colno}); "
                                    f"write one object per line with {text_key!r} and {label_key!r}") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{no}: expected a JSON object, found {type(obj).__name__}")
                for key, option in ((text_key, "text"), (label_key, "label")):
                    if key not in obj:
                        raise UserError(f"{path}:{no}: no field {key!r} (fields: {', '.join(obj) or 'none'}); "
                                        f"name the field with ?{option}=FIELD")
                text, label = obj[text_key], obj[label_key]
                if not isinstance(text, str):
                    raise UserError(f"{path}:{no}: field {text_key!r} must be a string, found {type(text).__name__}")
                if isinstance(label, bool) or not isinstance(label, (str, int)):
                    raise UserError(f"{path}:{no}: field {label_key!r} must be a string or an integer, "
                                    f"found {label!r}")
                if kind is None:
                    kind = type(label)
                elif type(label) is not kind:
                    raise UserError(f"{path}:{no}: label {label!r} is a {type(label).__name__} but earlier "
                                    f"labels are {kind.__name__}s; use one kind")
                if isinstance(label, int) and label < 0:
                    raise UserError(f"{path}:{no}: label {label} is negative; use 0..K-1 or names")
                out.append((text, label))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return out


# ---------------------------------------------------------------------------- encoding


def word_vocab(sentences: Sequence[Sequence[str]], min_freq: int = 1) -> list[str]:
    """``["[PAD]", "[UNK]", words...]``: the words seen at least ``min_freq`` times, most
    frequent first, ties in alphabetical order (index = id)."""
    counts = Counter(w for s in sentences for w in s if w not in (PAD, UNK))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return [PAD, UNK, *words]


def label_names(values: Sequence) -> list[str]:
    """Class or tag names for the labels seen: integers ``0..max`` as ``"0"``, ``"1"`` ...;
    strings sorted, with ``"O"`` first when present."""
    if values and all(isinstance(v, (int, np.integer)) for v in values):
        return [str(i) for i in range(int(max(values)) + 1)]
    names = sorted({str(v) for v in values})
    return (["O"] + [n for n in names if n != "O"]) if "O" in names else names


def hf_tokenizer(spec: str, where: str):
    """The tokenizer in the local directory ``spec`` (``DIR`` or ``hf:DIR``), or a UserError."""
    directory = spec[3:] if spec.startswith("hf:") else spec
    if not Path(directory).expanduser().is_dir():
        raise UserError(f"{where}: tokenizer {directory!r} is not a local directory; give a directory "
                        "holding a Hugging Face tokenizer (save_pretrained), e.g. tokenizer=models/bert")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(Path(directory).expanduser()), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to load is the user's directory
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{where}: cannot load a tokenizer from {directory!r} ({first[:200]})") from None
    if tok.pad_token_id is None:
        raise UserError(f"{where}: tokenizer {directory!r} has no pad token; set one and save it again")
    return tok, directory


@dataclass
class Encoder:
    """Turns words (a sentence) or a text into token ids, with the labels aligned."""

    tokenizer: object | None  # a HF tokenizer, or None for the word vocabulary
    vocab: list[str] | None
    pad_id: int
    name: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) if self.tokenizer is None else len(self.tokenizer)

    def words(self, text: str) -> list[str]:
        return text.split()

    def lengths(self, items: Sequence, token_level: bool) -> list[int]:
        """Untruncated lengths in tokens (special tokens included)."""
        if self.tokenizer is None:
            return [len(w if token_level else self.words(w)) for w in items]
        if not items:
            return []
        enc = self.tokenizer(list(items), is_split_into_words=token_level, add_special_tokens=True)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, examples: Examples, labels: list[str], max_len: int,
               token_level: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(x (N, L), y)``: ids padded with ``pad_id``; labels ``(N, L)`` with -100 where
        nothing is scored (token level) or ``(N,)``."""
        index = {name: i for i, name in enumerate(labels)}
        n = len(examples)
        x = np.full((n, max_len), self.pad_id, dtype=np.int64)
        y = np.full((n, max_len), IGNORE_INDEX, dtype=np.int64) if token_level else np.zeros(n, dtype=np.int64)
        if n == 0:
            return x, y
        if self.tokenizer is None:
            ids = {w: i for i, w in enumerate(self.vocab)}
            for i, (item, label) in enumerate(examples):
                words = (item if token_level else self.words(item))[:max_len]
                x[i, :len(words)] = [ids.get(w, 1) for w in words]
                if token_level:
                    y[i, :len(words)] = [index[t] for t in label[:max_len]]
                else:
                    y[i] = index[str(label)]
            return x, y
        items = [item for item, _ in examples]
        enc = self.tokenizer(items, is_split_into_words=token_level, truncation=True, max_length=max_len,
                             padding="max_length")
        x[:] = np.asarray(enc["input_ids"], dtype=np.int64)
        for i, (_, label) in enumerate(examples):
            if not token_level:
                y[i] = index[str(label)]
                continue
            previous = None
            for pos, word in enumerate(enc.word_ids(i)):
                if word is not None and word != previous:  # a word's first sub-token
                    y[i, pos] = index[label[word]]
                previous = word
        return x, y


def make_encoder(where: str, train_items: Sequence, token_level: bool, tokenizer: str | None,
                 min_freq: int) -> Encoder:
    """The HF tokenizer named by the option, else a word vocabulary from ``train_items``."""
    if tokenizer is not None:
        tok, directory = hf_tokenizer(tokenizer, where)
        if token_level and not getattr(tok, "is_fast", False):
            raise UserError(f"{where}: token-level data needs a fast tokenizer (tokenizer.json) to align labels "
                            f"to words; {directory!r} has a slow one")
        return Encoder(tok, None, int(tok.pad_token_id), f"hf:{directory}")
    sentences = [item if token_level else item.split() for item in train_items]
    return Encoder(None, word_vocab(sentences, min_freq), 0, "word")


def encode_splits(where: str, splits: dict[str, Examples], token_level: bool, labels: list[str], *,
                  tokenizer: str | None = None, max_len: str | None = None, min_freq: str | None = None,
                  notes: list[str] | None = None, num_classes: int | None = None) -> Raw:
    """Encode ``train``, ``test`` and optionally ``val`` examples into a :class:`Raw` with
    ``meta["text"]`` (label names ``labels``; options as their strings)."""
    freq = int_option(where, "min_freq", min_freq, 1)
    encoder = make_encoder(where, [item for item, _ in splits["train"]], token_level, tokenizer, freq)
    lengths = {s: encoder.lengths([item for item, _ in ex], token_level) for s, ex in splits.items()}
    longest = max(lengths["train"], default=1)
    length = int_option(where, "max_len", max_len, min(max(longest, 1), MAX_LEN_CAP))
    if encoder.tokenizer is not None and length <= encoder.tokenizer.num_special_tokens_to_add():
        raise UserError(f"{where}: max_len={length} leaves no room for the tokenizer's special tokens")
    arrays = {s: encoder.encode(ex, labels, length, token_level) for s, ex in splits.items()}
    notes = list(notes or [])
    cut = {s: sum(n > length for n in lengths[s]) for s in splits}
    if sum(cut.values()):
        total = sum(len(ex) for ex in splits.values())
        lost = "their tokens past it are not scored" if token_level else "their text past it is not seen"
        per = ", ".join(f"{s} {cut[s]}" for s in ("train", "val", "test") if s in cut)
        notes.append(f"truncated {sum(cut.values())} of {total} sentences to max_len {length} tokens "
                     f"({per}); {lost}")
    meta = {"level": "token" if token_level else "sequence", "pad_id": encoder.pad_id,
            "vocab_size": encoder.vocab_size, "tokenizer": encoder.name, "labels": list(labels),
            "max_len": length}
    if encoder.vocab is not None:
        meta["vocab"] = encoder.vocab
    val = {"x_val": arrays["val"][0], "y_val": arrays["val"][1]} if "val" in arrays else {}
    return Raw(*arrays["train"], *arrays["test"], num_classes=num_classes or len(labels), notes=notes,
               meta={"text": meta}, **val)


def _carve_test(where: str, splits: dict[str, Examples], seed: int, source: str) -> list[str]:
    """Move a seeded fifth of ``splits["train"]`` to ``splits["test"]``; the note saying so."""
    train = splits["train"]
    try:
        keep, test = carve_test(len(train), seed)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    splits["train"], splits["test"] = [train[i] for i in keep], [train[i] for i in test]
    return [f"no test split in {source}: test split ({len(test)} examples) carved from train with seed {seed}"]


# ------------------------------------------------------------------------------- conll


def load_conll(path: str | None, seed: int, *, tokenizer: str | None = None, max_len: str | None = None,
               min_freq: str | None = None) -> Raw:
    """``conll:DIR``: ``train.txt``, optional ``dev.txt`` (or ``valid.txt``: the validation
    split) and ``test.txt`` (else a seeded fifth of train, with a note); token level."""
    where = f"conll:{path}"
    folder = Path(path).expanduser()
    expected = "expected train.txt and optionally dev.txt (or valid.txt) and test.txt"
    if not folder.is_dir():
        raise UserError(f"{where}: no such directory; {expected}")
    if not (folder / "train.txt").is_file():
        raise UserError(f"{where}: no train.txt; {expected}")
    splits = {"train": read_conll(folder / "train.txt")}
    for name in ("dev.txt", "valid.txt"):
        if (folder / name).is_file():
            splits["val"] = read_conll(folder / name)
            break
    notes: list[str] = []
    if (folder / "test.txt").is_file():
        splits["test"] = read_conll(folder / "test.txt")
    else:
        notes = _carve_test(where, splits, seed, path)
    if not splits["train"]:
        raise UserError(f"{where}: train.txt holds no sentences")
    labels = label_names([t for ex in splits.values() for _, tags in ex for t in tags])
    return encode_splits(where, splits, True, labels, tokenizer=tokenizer, max_len=max_len,
                         min_freq=min_freq, notes=notes)


# ------------------------------------------------------------------------------- jsonl


def load_jsonl(path: str | None, seed: int, *, text: str | None = None, label: str | None = None,
               tokenizer: str | None = None, max_len: str | None = None, min_freq: str | None = None) -> Raw:
    """``jsonl:FILE`` (test: a seeded fifth, validation: carved by ``load_dataset``) or
    ``jsonl:DIR`` with ``train.jsonl``, optional ``dev.jsonl`` (``val.jsonl``,
    ``valid.jsonl``) and ``test.jsonl``; sequence classification."""
    where = f"jsonl:{path}"
    target = Path(path).expanduser()
    keys = (text or "text", label or "label")
    notes: list[str] = []
    if target.is_file():
        splits = {"train": read_jsonl(target, *keys)}
        notes = _carve_test(where, splits, seed, path)
    elif target.is_dir():
        if not (target / "train.jsonl").is_file():
            raise UserError(f"{where}: no train.jsonl; expected train.jsonl, optionally dev.jsonl and test.jsonl")
        splits = {"train": read_jsonl(target / "train.jsonl", *keys)}
        for name in ("dev.jsonl", "val.jsonl", "valid.jsonl"):
            if (target / name).is_file():
                splits["val"] = read_jsonl(target / name, *keys)
                break
        if (target / "test.jsonl").is_file():
            splits["test"] = read_jsonl(target / "test.jsonl", *keys)
        else:
            notes = _carve_test(where, splits, seed, path)
    else:
        raise UserError(f"{where}: no such file or directory; give a .jsonl file or a directory with train.jsonl")
    if not splits["train"]:
        raise UserError(f"{where}: no examples in the training file")
    labels = label_names([lab for ex in splits.values() for _, lab in ex])
    return encode_splits(where, splits, False, labels, tokenizer=tokenizer, max_len=max_len,
                         min_freq=min_freq, notes=notes)


# ----------------------------------------------------------------------------- hf-disk

VAL_NAMES = ("validation", "val", "dev", "valid")


def load_hf_disk(path: str | None, seed: int, *, text: str | None = None, label: str | None = None,
                 tokenizer: str | None = None, max_len: str | None = None, min_freq: str | None = None,
                 size: str | None = None, channels: str | None = None, bad: str | None = None,
                 stream: str | None = None, workers: str | None = None) -> Raw:
    """``hf-disk:DIR``: what ``datasets.Dataset.save_to_disk`` wrote. A ``DatasetDict`` with
    ``train``, optionally ``validation`` (``val``, ``dev``, ``valid``) and ``test`` (else a
    seeded fifth of train), or a single ``Dataset`` (test carved the same way).

    Columns: ``tokens`` + ``ner_tags`` (token level), ``text`` + ``label`` (sequence level;
    ``text=``/``label=`` name others), or ``image``/``img`` + ``label`` (image
    classification: float images as :mod:`compresslab.data.images` makes them, options
    ``size=``, ``channels=``, ``bad=``, ``stream=``, ``workers=`` as for ``imagefolder``).
    ``ClassLabel`` names become the label names."""
    where = f"hf-disk:{path}"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{where}: no such directory; give what datasets' save_to_disk wrote")
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(folder))
    except Exception as e:  # noqa: BLE001 - any failure to read is the user's directory
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{where}: not a saved datasets Dataset or DatasetDict ({first[:200]})") from None
    parts: dict = {}
    notes: list[str] = []
    if isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise UserError(f"{where}: no 'train' split (splits: {', '.join(loaded)}); name one 'train'")
        parts["train"] = loaded["train"]
        val = next((v for v in VAL_NAMES if v in loaded), None)
        if val:
            parts["val"] = loaded[val]
        if "test" in loaded:
            parts["test"] = loaded["test"]
    else:
        parts["train"] = loaded
    columns = parts["train"].column_names
    features = parts["train"].features
    image_col = next((c for c in ("image", "img") if c in columns), None)
    image_options = {"size": size, "channels": channels, "bad": bad, "stream": stream, "workers": workers}
    if text is None and image_col is not None:
        return _hf_images(where, folder, loaded, parts, image_col, label or "label", features, seed, image_options)
    given = [k for k, v in image_options.items() if v is not None]
    if given:
        raise UserError(f"{where}: option {given[0]} applies to image data only (an 'image' or 'img' column)")
    text_col = text or ("tokens" if "tokens" in columns else "text")
    label_col = label or ("ner_tags" if text_col == "tokens" and "ner_tags" in columns else "label")
    for col, option in ((text_col, "text"), (label_col, "label")):
        if col not in columns:
            raise UserError(f"{where}: no column {col!r} (columns: {', '.join(columns)}); "
                            f"name it with ?{option}=COLUMN")
    if len(parts["train"]) == 0:
        raise UserError(f"{where}: the train split is empty")
    token_level = isinstance(parts["train"][0][text_col], list)
    feature = features[label_col]
    names = getattr(getattr(feature, "feature", None) if token_level else feature, "names", None)
    splits: dict[str, Examples] = {}
    for split, ds in parts.items():
        items, labs = ds[text_col], ds[label_col]
        if token_level:
            bad = next((i for i, (w, t) in enumerate(zip(items, labs)) if len(w) != len(t)), None)
            if bad is not None:
                raise UserError(f"{where}: {split} row {bad}: {len(items[bad])} tokens but {len(labs[bad])} tags")
        splits[split] = list(zip(items, labs))
    if "test" not in splits:
        notes = _carve_test(where, splits, seed, path)
    if names is None:
        seen = [t for ex in splits.values() for _, tags in ex for t in (tags if token_level else [tags])]
        names = label_names(seen)
    else:
        names = list(names)
    splits = {s: [(item, _names(where, lab, names, token_level)) for item, lab in ex] for s, ex in splits.items()}
    return encode_splits(where, splits, token_level, names, tokenizer=tokenizer, max_len=max_len,
                         min_freq=min_freq, notes=notes)


def _names(where: str, label, names: list[str], token_level: bool):
    """Integer labels as their names (strings pass through)."""
    def one(v):
        if not isinstance(v, (int, np.integer)):
            return str(v)
        if not 0 <= v < len(names):
            raise UserError(f"{where}: label {v} is outside 0..{len(names) - 1} ({', '.join(names[:8])}...)")
        return names[v]

    return [one(v) for v in label] if token_level else one(label)


@functools.lru_cache(maxsize=4)
def _hf_split(folder: str, split: str | None):
    """One split of a saved dataset, memory-mapped once per process (DataLoader workers too)."""
    from datasets import load_from_disk

    loaded = load_from_disk(folder)
    return loaded[split] if split is not None else loaded


def hf_image(key: str, folder: str, split: str | None, column: str, size: int, channels: int) -> np.ndarray:
    """Row ``int(key)``'s image of a saved dataset through :func:`compresslab.data.images.to_array`."""
    from compresslab.data import images

    return images.to_array(_hf_split(folder, split)[int(key)][column], size, channels)


def _hf_images(where: str, folder: Path, loaded, parts: dict, image_col: str, label_col: str, features, seed: int,
               options: dict) -> Raw:
    """Image classification from an ``hf-disk:`` set, row by row through
    :func:`compresslab.data.images.read_split` (``bad=``, ``stream=``, ``workers=`` as for
    ``imagefolder``)."""
    from datasets import DatasetDict

    from compresslab.data import images

    if label_col not in parts["train"].column_names:
        raise UserError(f"{where}: no column {label_col!r} next to {image_col!r}; name it with ?label=COLUMN")
    side, chans, bad, lazy, procs = images.image_options(where, **options)
    split_names = {s: next(k for k, v in loaded.items() if v is ds) if isinstance(loaded, DatasetDict) else None
                   for s, ds in parts.items()}
    skipped: list[str] = []
    arrays = {}
    for split, ds in parts.items():
        name = split_names[split]
        decode = functools.partial(hf_image, folder=str(folder), split=name, column=image_col, size=side,
                                   channels=chans)
        keys = [str(i) for i in range(len(ds))]
        shown = [f"{name or 'dataset'} row {i}" for i in range(len(ds))]
        arrays[split] = images.read_split(where, keys, shown, np.asarray(ds[label_col], dtype=np.int64), decode,
                                          (chans, side, side), bad=bad, lazy=lazy and split == "train",
                                          workers=procs, skipped=skipped)
    names = getattr(features[label_col], "names", None)
    return images.finish(where, arrays, seed, skipped, procs, {"classes": list(names)} if names else None,
                         len(names) if names else None)
