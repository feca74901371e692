"""A synthetic NER corpus about endangered species, and the generators that write it.

The setting follows Atuhurra et al. 2024 ("Distilling Named Entity Recognition Models for
Endangered Species from Large Language Models"): an LLM writes sentences about four classes
of endangered species (amphibians, arthropods, birds, fishes) with their entities marked,
people verify them, and the verified set fine-tunes a small tagger. The entity types are the
paper's: ``SPECIES``, ``HABITAT`` (places where a species lives: habitats *and* locations, as
the paper tags them), ``FEEDING`` (what it eats) and ``BREEDING`` (how it reproduces). Threats
appear in sentences as untagged context.

A generator turns ``(n, seed)`` into :class:`Sentence` s, each with tokens and BIO tags. The
tags are the generator's own spans, the first teacher annotation:

* ``template``: offline, deterministic given the seed; sentence templates whose slots are
  filled from the gazetteers shipped in ``compresslab/data/gazetteers/``;
* ``http://HOST/v1`` (or https): any OpenAI-compatible chat endpoint, asked with a prompt
  template read from a file (few-shot examples; ``{n}`` and ``{species_class}`` are filled
  in); entities come back marked inline as ``<SPECIES>Axolotl</SPECIES>``;
* ``hf:DIR``: a local Hugging Face causal LM, sampled with the same prompt.

Add one with :func:`register_generator`. The dataset ``ner-synthetic`` (:func:`load_ner_synthetic`)
is the template corpus with its spans as gold, encoded with a word vocabulary, so the
store's ``train`` and ``distill`` steps can use it by name.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol

from compresslab.errors import UserError

ENTITY_TYPES = ("SPECIES", "HABITAT", "FEEDING", "BREEDING")
SPECIES_CLASSES = ("amphibians", "arthropods", "birds", "fishes")
#: Tag names by label id: ``O`` first, then ``B-``/``I-`` per type.
LABELS = ["O"] + [f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")]
#: What each template slot is filled from and the entity type it is tagged with (None: untagged).
SLOTS = {"species": "SPECIES", "habitat": "HABITAT", "location": "HABITAT", "feeding": "FEEDING",
         "breeding": "BREEDING", "threat": None}

_TOKEN = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")
_SLOT = re.compile(r"\{([a-z]+)(\d?)\}")
_MARK = re.compile(r"<([A-Za-z_]+)>(.*?)</\1>")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def tokenize(text: str) -> list[str]:
    """Words (with inner hyphens, apostrophes and dots: ``spoon-billed``, ``Archey's``) and
    punctuation marks, one token each."""
    return _TOKEN.findall(text)


@dataclass
class Sentence:
    """One sentence: ``tokens`` and their BIO ``tags`` (same length), and where it came from."""

    tokens: list[str]
    tags: list[str]
    species_class: str | None = None
    source: str = ""

    def __post_init__(self):
        if len(self.tokens) != len(self.tags):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.tags)} tags")

    def marked(self) -> str:
        """The sentence with its entities marked inline, ``<SPECIES>Axolotl</SPECIES> eat ...``
        (the format the LLM generators ask for; tags are read as IOB2)."""
        out: list[str] = []
        open_type = None
        for tok, tag in zip(self.tokens, self.tags):
            prefix, _, typ = tag.partition("-")
            if open_type and (prefix != "I" or typ != open_type):
                out[-1] += f"</{open_type}>"
                open_type = None
            if prefix in ("B", "I") and open_type is None:
                out.append(f"<{typ}>{tok}")
                open_type = typ
            else:
                out.append(tok)
        if open_type:
            out[-1] += f"</{open_type}>"
        return " ".join(out)

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "tags": self.tags, "class": self.species_class, "source": self.source}

    @classmethod
    def from_json(cls, d: dict) -> Sentence:
        return cls(list(d["tokens"]), list(d["tags"]), d.get("class"), d.get("source", ""))


def parse_marked(line: str, types: Iterable[str] = ENTITY_TYPES) -> Sentence | None:
    """A line with inline marks (``<HABITAT>coral reefs</HABITAT>``) as a tagged sentence;
    None when a mark is unbalanced or names a type outside ``types``, or no token is left."""
    types = set(types)
    tokens: list[str] = []
    tags: list[str] = []
    pos = 0
    for m in _MARK.finditer(line):
        plain = line[pos:m.start()]
        if "<" in plain and re.search(r"</?[A-Za-z_]+>", plain):
            return None  # an opening or closing mark without its partner
        words = tokenize(plain)
        tokens += words
        tags += ["O"] * len(words)
        typ, inner = m.group(1).upper(), tokenize(m.group(2))
        if typ not in types or not inner:
            return None
        tokens += inner
        tags += [f"B-{typ}"] + [f"I-{typ}"] * (len(inner) - 1)
        pos = m.end()
    rest = line[pos:]
    if re.search(r"</?[A-Za-z_]+>", rest):
        return None
    words = tokenize(rest)
    tokens += words
    tags += ["O"] * len(words)
    return Sentence(tokens, tags) if tokens else None


def parse_reply(text: str, *, require_entity: bool = True) -> tuple[list[Sentence], int]:
    """The sentences in a generator's reply, one per line (bullets and numbering stripped),
    and how many non-empty lines were skipped (unbalanced marks, unknown types, or, with
    ``require_entity``, no entity at all: preambles such as "Here are ten sentences:")."""
    out, skipped = [], 0
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip()
        if not line:
            continue
        s = parse_marked(line)
        if s is None or (require_entity and all(t == "O" for t in s.tags)):
            skipped += 1
            continue
        out.append(s)
    return out, skipped


# ---------------------------------------------------------------------------- gazetteers

GAZETTEER_DIR = "gazetteers"


def _read_list(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@lru_cache(maxsize=64)
def gazetteer(name: str) -> tuple[str, ...]:
    """The entries of the shipped gazetteer ``name`` (``species-birds``, ``locations``, ...)."""
    path = resources.files("compresslab.data").joinpath(GAZETTEER_DIR, f"{name}.txt")
    if not path.is_file():
        raise UserError(f"no gazetteer {name!r} in compresslab/data/{GAZETTEER_DIR}; reinstall compresslab")
    return tuple(_read_list(path.read_text(encoding="utf-8")))


def species_names(species_class: str) -> list[tuple[str, str]]:
    """``(common name, scientific name)`` pairs of one class."""
    pairs = []
    for line in gazetteer(f"species-{species_class}"):
        common, _, scientific = (part.strip() for part in line.partition("|"))
        pairs.append((common, scientific or common))
    return pairs


def default_prompt() -> str:
    """The shipped prompt template of the LLM generators (few-shot, inline marks)."""
    return resources.files("compresslab.data").joinpath(GAZETTEER_DIR, "prompt.txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- generators

class Generator(Protocol):
    """Writes ``n`` tagged sentences; the same ``seed`` gives the same sentences where the
    backend allows (the template generator always; LLMs when they honour a seed)."""

    name: str

    def generate(self, n: int, seed: int) -> list[Sentence]: ...


#: Sentence templates; ``{slot}`` or ``{slot2}`` (a second, different entry of the same slot).
TEMPLATES = (
    "{species} live in {habitat} of {location} .",
    "{species} feed on {feeding} and {feeding2} .",
    "{species} breed by {breeding} .",
    "In {location} , the {species} is found in {habitat} .",
    "The {species} is threatened by {threat} in {location} .",
    "Populations of {species} in {habitat} have declined because of {threat} .",
    "{species} mainly eat {feeding} , which they find in {habitat} .",
    "During the wet season {species} reproduce through {breeding} in {habitat} .",
    "Surveys in {location} recorded {species} feeding on {feeding} .",
    "Conservation work in {location} protects {habitat} where {species} live .",
    "{threat} and {threat2} put the remaining {species} of {location} at risk .",
    "The diet of the {species} consists of {feeding} .",
    "Unlike most relatives , the {species} relies on {breeding} .",
    "Researchers observed {species} in {habitat} near {location} eating {feeding} .",
    "Because of {threat} , {species} now survive only in {habitat} .",
    "{species} are known from {location} , where they breed by {breeding} .",
)


def _fill(template: str, slots: dict[str, list[str]]) -> list[tuple[str, str | None]]:
    """``template`` as ``(text, entity type or None)`` pieces with every slot filled."""
    pieces: list[tuple[str, str | None]] = []
    pos = 0
    for m in _SLOT.finditer(template):
        if m.start() > pos:
            pieces.append((template[pos:m.start()], None))
        slot, second = m.group(1), m.group(2)
        values = slots[slot]
        pieces.append((values[1 if second else 0], SLOTS[slot]))
        pos = m.end()
    if pos < len(template):
        pieces.append((template[pos:], None))
    return pieces


def render(pieces: list[tuple[str, str | None]]) -> tuple[list[str], list[str]]:
    """Tokens and BIO tags of ``(text, type)`` pieces (the spans become the tags)."""
    tokens: list[str] = []
    tags: list[str] = []
    for text, typ in pieces:
        words = tokenize(text)
        tokens += words
        tags += ["O"] * len(words) if typ is None else [f"B-{typ}"] + [f"I-{typ}"] * (len(words) - 1)
    if tokens:
        tokens[0] = tokens[0][:1].upper() + tokens[0][1:]
    return tokens, tags


@dataclass
class TemplateGenerator:
    """Offline sentences from :data:`TEMPLATES` and the gazetteers. Sentence ``i`` is about
    class ``SPECIES_CLASSES[i % 4]`` (the four classes evenly, as in the paper); a quarter of
    the species mentions use the scientific name. Entries in ``exclude`` (gazetteer lines, see
    :func:`held_out`) are never used. Deterministic given the seed."""

    name: str = "template"
    scientific: float = 0.25
    exclude: frozenset[str] = frozenset()

    def _pool(self, name: str) -> list[str]:
        return [e for e in gazetteer(name) if e not in self.exclude]

    def generate(self, n: int, seed: int) -> list[Sentence]:
        rng = random.Random(seed)
        out = []
        for i in range(n):
            cls = SPECIES_CLASSES[i % len(SPECIES_CLASSES)]
            species = [p for p, line in zip(species_names(cls), gazetteer(f"species-{cls}")) if line not in self.exclude]
            common, scientific = rng.choice(species)
            slots = {
                "species": [scientific if rng.random() < self.scientific else common],
                "habitat": rng.sample(self._pool(f"habitat-{cls}"), 2),
                "location": rng.sample(self._pool("locations"), 2),
                "feeding": rng.sample(self._pool(f"feeding-{cls}"), 2),
                "breeding": rng.sample(self._pool(f"breeding-{cls}"), 2),
                "threat": rng.sample(gazetteer("threats"), 2),
            }
            tokens, tags = render(_fill(rng.choice(TEMPLATES), slots))
            out.append(Sentence(tokens, tags, cls, self.name))
        return out


#: The gazetteers whose entries are entities (threats are context, never held out).
ENTITY_GAZETTEERS = ("locations", *(f"{k}-{c}" for c in SPECIES_CLASSES for k in ("species", "habitat", "feeding",
                                                                                    "breeding")))


def held_out(fraction: float, seed: int) -> frozenset[str]:
    """A seeded ``fraction`` of every entity gazetteer's lines (at least one per list when
    ``fraction`` > 0): entities a model trained without them has never seen."""
    if fraction <= 0:
        return frozenset()
    rng = random.Random(f"held-out-{seed}")
    out: set[str] = set()
    for name in ENTITY_GAZETTEERS:
        lines = list(gazetteer(name))
        out.update(rng.sample(lines, max(1, round(fraction * len(lines)))))
    return frozenset(out)


def _fill_prompt(template: str, n: int, species_class: str) -> str:
    return template.replace("{n}", str(n)).replace("{species_class}", species_class)


@dataclass
class _LLMGenerator:
    """What the LLM generators share: ask for ``batch`` sentences of one class at a time
    (classes in turn), parse the reply, stop at ``n`` sentences or after ``max_requests``."""

    name: str
    prompt: str
    batch: int = 10
    require_entity: bool = True
    skipped: int = field(default=0, init=False)
    requests: int = field(default=0, init=False)

    def complete(self, prompt: str, seed: int) -> str:
        raise NotImplementedError

    def generate(self, n: int, seed: int) -> list[Sentence]:
        out: list[Sentence] = []
        limit = 3 * math.ceil(n / self.batch) + 2
        self.skipped = self.requests = 0
        while len(out) < n and self.requests < limit:
            cls = SPECIES_CLASSES[self.requests % len(SPECIES_CLASSES)]
            text = self.complete(_fill_prompt(self.prompt, min(self.batch, n - len(out)), cls), seed + self.requests)
            self.requests += 1
            got, skipped = parse_reply(text, require_entity=self.require_entity)
            self.skipped += skipped
            out += [Sentence(s.tokens, s.tags, cls, self.name) for s in got]
        if len(out) < n:
            raise UserError(f"generator {self.name} gave {len(out)} of {n} sentences in {self.requests} requests "
                            f"({self.skipped} lines skipped: no or unbalanced <TYPE>...</TYPE> marks); check the prompt")
        return out[:n]


@dataclass
class ChatGenerator(_LLMGenerator):
    """An OpenAI-compatible chat endpoint: ``POST {url}/chat/completions`` with one user
    message (the filled prompt); the reply's ``choices[0].message.content`` is parsed.
    ``model`` is sent as given (``--generator http://HOST/v1?model=NAME``); an
    ``OPENAI_API_KEY`` in the environment is sent as a bearer token."""

    url: str = ""
    model: str = "default"
    temperature: float = 1.0
    timeout: float = 120.0

    def complete(self, prompt: str, seed: int) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": self.temperature, "seed": seed}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        req = urllib.request.Request(self.url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise UserError(f"{self.url}: HTTP {e.code} {e.reason}; check the URL (it ends in /v1) and the model "
                            "name (?model=NAME)") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"cannot reach {self.url} ({reason}); start the server or check --generator") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{self.url}: the reply is not JSON; is it an OpenAI-compatible /v1 endpoint?") from None
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url}: the reply has no choices[0].message.content; is it an OpenAI-compatible "
                            "chat endpoint?") from None


@dataclass
class CausalLMGenerator(_LLMGenerator):
    """A local Hugging Face causal LM directory (``AutoModelForCausalLM`` + its tokenizer),
    sampled (``do_sample``, torch seeded per request) for ``max_new_tokens``."""

    directory: str = ""
    max_new_tokens: int = 256

    @property
    def _loaded(self):
        if not hasattr(self, "_cache"):
            try:
                from transformers import AutoModelForCausalLM, AutoTokenizer
            except ImportError as e:
                raise UserError(f"--generator hf:DIR needs transformers ({e}); pip install 'compresslab[hf]'") from None
            path = Path(self.directory)
            if not path.is_dir():
                raise UserError(f"--generator hf:{self.directory}: no such directory; download the model with "
                                f"`huggingface-cli download NAME --local-dir DIR` on a connected machine and pass hf:DIR")
            try:
                tok = AutoTokenizer.from_pretrained(path)
                model = AutoModelForCausalLM.from_pretrained(path).eval()
            except (OSError, ValueError) as e:
                raise UserError(f"hf:{self.directory} is not a causal-LM directory with a tokenizer: "
                                f"{str(e).splitlines()[0]}") from None
            self._cache = (tok, model)
        return self._cache

    def complete(self, prompt: str, seed: int) -> str:
        import torch

        tok, model = self._loaded
        enc = tok(prompt, return_tensors="pt")
        torch.manual_seed(seed)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, max_new_tokens=self.max_new_tokens,
                                 min_new_tokens=1, pad_token_id=pad)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


#: Generator factories by prefix: ``factory(spec, prompt_text) -> Generator``.
GENERATORS: dict[str, Callable[[str, str], Generator]] = {}


def register_generator(prefix: str, factory: Callable[[str, str], Generator]) -> None:
    """Make ``--generator PREFIX...`` build ``factory(spec, prompt)``: the whole spec string
    and the prompt template's text. A prefix ending in ``:`` or ``//`` matches every spec
    that starts with it (``hf:``, ``http://``); any other prefix matches only itself."""
    GENERATORS[prefix] = factory


def _chat(spec: str, prompt: str) -> Generator:
    url, _, query = spec.partition("?")
    opts = dict(p.partition("=")[::2] for p in query.split("&") if p)
    unknown = set(opts) - {"model", "temperature", "batch"}
    if unknown:
        raise UserError(f"--generator {spec}: unknown option {sorted(unknown)[0]!r}; use model=, temperature=, batch=")
    try:
        return ChatGenerator(name=url, prompt=prompt, url=url, model=opts.get("model", "default"),
                             temperature=float(opts.get("temperature", 1.0)), batch=int(opts.get("batch", 10)))
    except ValueError:
        raise UserError(f"--generator {spec}: temperature must be a number and batch an integer") from None


register_generator("template", lambda spec, prompt: TemplateGenerator())
register_generator("http://", _chat)
register_generator("https://", _chat)
register_generator("hf:", lambda spec, prompt: CausalLMGenerator(name=spec, prompt=prompt, directory=spec[3:]))


def make_generator(spec: str, prompt: str | None = None) -> Generator:
    """The generator ``spec`` names (``template``, ``http://HOST/v1[?model=NAME]``, ``hf:DIR``);
    ``prompt`` is the LLM prompt template's text (default: :func:`default_prompt`)."""
    for prefix in sorted(GENERATORS, key=len, reverse=True):
        if spec == prefix or (prefix.endswith((":", "//")) and spec.startswith(prefix) and len(spec) > len(prefix)):
            return GENERATORS[prefix](spec, prompt if prompt is not None else default_prompt())
    raise UserError(f"--generator {spec!r}: use template, http://HOST/v1 (an OpenAI-compatible endpoint) or hf:DIR")


# ---------------------------------------------------------------------------- files

_TAG = re.compile(r"^(O|[BI]-[A-Za-z_][\w-]*)$")


def is_tag(tag: str) -> bool:
    """True for ``O``, ``B-TYPE`` and ``I-TYPE``."""
    return bool(_TAG.match(tag))


def write_conll(path: Path, sentences: list[Sentence]) -> None:
    """``token TAG`` per line, a blank line after each sentence (CoNLL-2003 style, two columns)."""
    lines = []
    for s in sentences:
        lines += [f"{tok} {tag}" for tok, tag in zip(s.tokens, s.tags)]
        lines.append("")
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def read_conll(path: Path) -> tuple[list[Sentence], list[int]]:
    """The sentences of a CoNLL file and the line number each starts on. Columns are split
    on whitespace: the first is the token and the last the tag (``O``, ``B-TYPE`` or
    ``I-TYPE``); ``-DOCSTART-`` lines are skipped (as ``conll:DIR`` reads files; see
    :func:`compresslab.data.text.read_conll`, which this one extends with the line each
    sentence starts on and a strict tag check). A line with one column or a tag of another
    form raises :class:`UserError` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the CoNLL file as UTF-8") from None
    sentences: list[Sentence] = []
    starts: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for no, line in enumerate(text.splitlines(), 1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if tokens:
                sentences.append(Sentence(tokens, tags))
                starts.append(start)
                tokens, tags = [], []
            continue
        if len(cols) < 2:
            raise UserError(f"{path}:{no}: malformed line {line.strip()!r}: expected 'TOKEN TAG' "
                            "(a tag such as O, B-SPECIES or I-HABITAT)")
        if not _TAG.match(cols[-1]):
            raise UserError(f"{path}:{no}: tag {cols[-1]!r} is not O, B-TYPE or I-TYPE; fix the line")
        if not tokens:
            start = no
        tokens.append(cols[0])
        tags.append(cols[-1])
    if tokens:
        sentences.append(Sentence(tokens, tags))
        starts.append(start)
    return sentences, starts


def write_jsonl(path: Path, sentences: list[Sentence]) -> None:
    Path(path).write_text("".join(json.dumps(s.to_json()) + "\n" for s in sentences), encoding="utf-8")


def read_jsonl(path: Path) -> list[Sentence]:
    """Sentences written by :func:`write_jsonl`; a bad line is a :class:`UserError` with its number."""
    out = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Sentence.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}:{no}: not a sentence record ({type(e).__name__}); expected "
                            '{"tokens": [...], "tags": [...]}') from None
    return out


def split_indices(n: int, seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, list[int]]:
    """A seeded train/dev/test partition of ``range(n)`` (sorted indices per split)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * n)
    n_dev = round(fractions[1] * n)
    parts = {"train": order[:n_train], "dev": order[n_train:n_train + n_dev], "test": order[n_train + n_dev:]}
    return {k: sorted(v) for k, v in parts.items()}


# ---------------------------------------------------------------------------- the dataset

NER_SYNTHETIC_OPTIONS = {"sentences": 1800, "seed": 0, "max_len": 32, "test": 0.1, "unseen": 0.0}


def ner_synthetic_options(opts: dict | None) -> dict:
    """The options of ``ner-synthetic?sentences=N&seed=S&max_len=L&test=F``, checked."""
    opts = dict(opts or {})
    unknown = set(opts) - set(NER_SYNTHETIC_OPTIONS)
    if unknown:
        raise UserError(f"ner-synthetic: unknown option {sorted(unknown)[0]!r}; use "
                        + ", ".join(f"{k}= (default {v})" for k, v in NER_SYNTHETIC_OPTIONS.items()))
    out = dict(NER_SYNTHETIC_OPTIONS)
    try:
        for k, v in opts.items():
            out[k] = type(NER_SYNTHETIC_OPTIONS[k])(v)
    except (TypeError, ValueError):
        raise UserError(f"ner-synthetic: bad option value in {opts}; e.g. ner-synthetic?sentences=1800&seed=0") from None
    if out["sentences"] < 20 or out["max_len"] < 4 or not 0 < out["test"] < 0.5 or not 0 <= out["unseen"] <= 0.5:
        raise UserError("ner-synthetic: need sentences >= 20, max_len >= 4, 0 < test < 0.5 and 0 <= unseen <= 0.5")
    return out


def load_ner_synthetic(path: str | None = None, split_seed: int = 0, /, **opts: str):
    """``ner-synthetic?sentences=N&seed=S&max_len=L&test=F&unseen=U``: the template corpus (its
    spans as gold) as a :class:`~compresslab.data.loaders.Raw`: int64 token ids ``(N, L)``
    over a word vocabulary of the train part (``compresslab.data.text``'s), labels ``(N, L)``
    with -100 at padding, ``meta["text"]`` per the text-data contract. The corpus seed is
    the ``seed`` option, not ``split_seed`` (the validation split's, which load_dataset
    carves), so every step of a study sees the same sentences. With ``unseen`` > 0 a seeded
    fraction of every entity gazetteer is held out of the training sentences, and the test
    sentences (generated apart) draw from every entry: a test of entities never seen."""
    from compresslab.data.loaders import Raw
    from compresslab.data.text import Encoder, word_vocab

    o = ner_synthetic_options(opts)
    n_test = max(1, round(o["test"] * o["sentences"]))
    notes = [f"synthetic NER corpus: {o['sentences']} template sentences (seed {o['seed']}), the generator's "
             "spans as gold"]
    if o["unseen"] > 0:  # training never sees the held-out entries; the test sentences draw from every entry
        held = held_out(o["unseen"], o["seed"])
        train = TemplateGenerator(exclude=held).generate(o["sentences"] - n_test, o["seed"])
        test = TemplateGenerator().generate(n_test, o["seed"] + 1_000_003)
        names = {" ".join(tokenize(part)).lower() for h in held for part in h.split("|") if part.strip()}
        unseen = sum(any(" ".join(s.tokens[a:b + 1]).lower() in names for a, b in _spans(s)) for s in test)
        notes.append(f"{len(held)} gazetteer entries ({o['unseen']:g} of each entity list) are held out of "
                     f"training; {unseen} of {n_test} test sentences name at least one of them")
    else:
        sentences = TemplateGenerator().generate(o["sentences"], o["seed"])
        order = list(range(len(sentences)))
        random.Random(o["seed"]).shuffle(order)
        test = [sentences[i] for i in sorted(order[:n_test])]
        train = [sentences[i] for i in sorted(order[n_test:])]
    vocab = word_vocab([s.tokens for s in train])
    encoder = Encoder(None, vocab, 0, "word")
    x_train, y_train = encoder.encode([(s.tokens, s.tags) for s in train], LABELS, o["max_len"], True)
    x_test, y_test = encoder.encode([(s.tokens, s.tags) for s in test], LABELS, o["max_len"], True)
    text = {"level": "token", "pad_id": 0, "vocab_size": len(vocab), "tokenizer": "word", "labels": list(LABELS),
            "max_len": o["max_len"], "vocab": vocab}
    return Raw(x_train, y_train, x_test, y_test, num_classes=len(LABELS), notes=notes, meta={"text": text})


def _spans(s: Sentence) -> list[tuple[int, int]]:
    """``(start, end)`` of each maximal B/I run (the generator writes clean IOB2)."""
    out: list[tuple[int, int]] = []
    for i, tag in enumerate(s.tags):
        if tag.startswith("B-"):
            out.append((i, i))
        elif tag.startswith("I-") and out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
    return out
