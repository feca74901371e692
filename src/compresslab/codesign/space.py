"""The hierarchical search space of the global architecture search, in YAML.

A space lists the families to search and, per family, a range of depths and the choices of
one block (layer). A block's choices exist only if the block does: a sampled CNN of 2 blocks
has parameters ``cnn.block0.*`` and ``cnn.block1.*`` and none for block 2. ::

    family: [mlp, cnn]                 # the families to search (each needs its section)
    mlp:
      layers: {min: 1, max: 4}         # hidden layers; an integer fixes the depth
      layer:
        width: [8, 16, 32, 64]         # required
        act: [relu, gelu]              # optional, default [relu]
        norm: [none, batch]            # optional, default [none]
    cnn:
      blocks: {min: 1, max: 3}         # conv blocks: conv -> norm -> act [+ skip] -> pool
      block:
        channels: [4, 8, 16, 32]       # required
        kernel: [1, 3, 5]              # odd sizes ("same" padding); default [3]
        act: [relu, gelu]              # default [relu]
        norm: [none, batch]            # default [none]
        skip: [false, true]            # residual around the block (1x1 conv when widths differ); default [false]
        pool: [none, max, avg]         # 2x pooling after the block; default [none]
      head:
        widths: [[], [16], [32, 16]]   # hidden dense widths after flattening; default [[]]
        act: [relu]                    # default [relu]

Choices are lists; an empty list, an unknown key, ``min`` > ``max`` or a value the network
cannot take is a :class:`UserError`. :func:`sample` draws one architecture through an
Optuna-style trial (``suggest_categorical``, ``suggest_int``); the result is the ``options``
of the ``searched`` model (:mod:`compresslab.models.searched`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from compresslab.errors import UserError

ACTS = ("relu", "leaky_relu", "gelu", "silu", "tanh")
NORMS = ("none", "batch")
POOLS = ("none", "max", "avg")
FAMILIES = ("mlp", "cnn")

#: Per family: its depth key, its block key, and per block key (required, default choices).
_BLOCK_KEYS = {
    "mlp": ("layers", "layer", {"width": None, "act": ["relu"], "norm": ["none"]}),
    "cnn": ("blocks", "block", {"channels": None, "kernel": [3], "act": ["relu"], "norm": ["none"],
                                "skip": [False], "pool": ["none"]}),
}
_HEAD_KEYS = {"widths": [[]], "act": ["relu"]}


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


#: What each choice may hold: a test and a hint for the error message.
_VALUES = {
    "width": (_positive_int, "positive integers"),
    "channels": (_positive_int, "positive integers"),
    "kernel": (lambda v: _positive_int(v) and v % 2 == 1, "odd positive integers (same padding), e.g. [1, 3, 5]"),
    "act": (lambda v: v in ACTS, "from " + ", ".join(ACTS)),
    "norm": (lambda v: v in NORMS, "from " + ", ".join(NORMS)),
    "pool": (lambda v: v in POOLS, "from " + ", ".join(POOLS)),
    "skip": (lambda v: isinstance(v, bool), "true or false"),
    "widths": (lambda v: isinstance(v, list) and all(_positive_int(w) for w in v),
               "lists of positive widths, e.g. [[], [16], [32, 16]]"),
}


@dataclass(frozen=True)
class Space:
    """A parsed space: ``families`` maps each searched family to its normalised section
    (``{depth: [min, max], block: {key: choices}, head: {key: choices}}`` for a CNN)."""

    families: dict

    def as_dict(self) -> dict:
        """The normalised space, every default written out (what a search's hash covers)."""
        return {"family": list(self.families), **self.families}


def _mapping(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise UserError(f"search space: {where} must be a mapping, e.g. 'layers: {{min: 1, max: 3}}'")
    return raw


def _unknown(raw: dict, known, where: str) -> None:
    extra = [str(k) for k in raw if k not in known]
    if extra:
        raise UserError(f"search space: unknown key {where}{extra[0]!r}; known: {', '.join(known)}")


def _choices(raw: dict, defaults: dict, where: str) -> dict:
    _unknown(raw, list(defaults), where + ".")
    out = {}
    for key, default in defaults.items():
        if key not in raw:
            if default is None:
                raise UserError(f"search space: {where}.{key} is required (a list of choices)")
            out[key] = list(default)
            continue
        values = raw[key]
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise UserError(f"search space: {where}.{key} is an empty choice list; list at least one value")
        test, hint = _VALUES[key]
        bad = [v for v in values if not test(v)]
        if bad:
            raise UserError(f"search space: {where}.{key}: {bad[0]!r} is not allowed; use {hint}")
        if len({repr(v) for v in values}) != len(values):
            raise UserError(f"search space: {where}.{key} lists a value twice: {values}")
        out[key] = list(values)
    return out


def _range(raw, where: str) -> list[int]:
    if _positive_int(raw):
        return [raw, raw]
    raw = _mapping(raw, where)
    _unknown(raw, ["min", "max"], where + ".")
    lo, hi = raw.get("min", 1), raw.get("max")
    if hi is None:
        raise UserError(f"search space: {where} needs max, e.g. {{min: 1, max: 3}}")
    if not (_positive_int(lo) and _positive_int(hi)):
        raise UserError(f"search space: {where}: min and max must be positive integers, got {lo!r} and {hi!r}")
    if lo > hi:
        raise UserError(f"search space: {where}: min {lo} > max {hi}")
    return [lo, hi]


def parse_space(raw) -> Space:
    """Validate a space (the YAML's mapping) and fill in the defaults."""
    raw = _mapping(raw, "the file")
    _unknown(raw, ["family", *FAMILIES], "")
    families = raw.get("family")
    if families is None:
        raise UserError("search space: 'family' is required, e.g. 'family: [mlp, cnn]'")
    families = families if isinstance(families, list) else [families]
    if not families:
        raise UserError("search space: family is an empty choice list; list at least one of mlp, cnn")
    out = {}
    for fam in families:
        if fam not in FAMILIES:
            raise UserError(f"search space: unknown family {fam!r}; use {' or '.join(FAMILIES)}")
        if fam not in raw:
            raise UserError(f"search space: family lists {fam} but there is no '{fam}:' section")
        section = _mapping(raw[fam], fam)
        depth, block, defaults = _BLOCK_KEYS[fam]
        keys = [depth, block] + (["head"] if fam == "cnn" else [])
        _unknown(section, keys, f"{fam}.")
        if depth not in section or block not in section:
            raise UserError(f"search space: {fam} needs '{depth}' and '{block}'")
        out[fam] = {depth: _range(section[depth], f"{fam}.{depth}"),
                    block: _choices(_mapping(section[block], f"{fam}.{block}"), defaults, f"{fam}.{block}")}
        if fam == "cnn":
            out[fam]["head"] = _choices(_mapping(section.get("head", {}), "cnn.head"), _HEAD_KEYS, "cnn.head")
    return Space(out)


def load_space(path: str | Path) -> Space:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        line = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise UserError(f"{path}: malformed YAML{line}: {e.problem}") from None
    return parse_space(raw)


def _label(widths: list[int]) -> str:
    """A head's widths as an Optuna choice (choices must be scalars): ``[32, 16]`` -> ``"32-16"``."""
    return "-".join(map(str, widths)) or "none"


def sample(space: Space, trial) -> dict:
    """One architecture drawn through ``trial`` (``suggest_categorical``/``suggest_int``):
    the ``options`` of the ``searched`` model. Parameter names are ``family``,
    ``<family>.<depth>`` and ``<family>.<block><i>.<key>`` for the blocks that exist."""
    family = trial.suggest_categorical("family", list(space.families))
    section = space.families[family]
    depth, block, _ = _BLOCK_KEYS[family]
    n = trial.suggest_int(f"{family}.{depth}", *section[depth])
    units = [{key: trial.suggest_categorical(f"{family}.{block}{i}.{key}", choices)
              for key, choices in section[block].items()} for i in range(n)]
    arch = {"family": family, depth: units}
    if family == "cnn":
        heads = {_label(w): w for w in section["head"]["widths"]}
        arch["head"] = list(heads[trial.suggest_categorical("cnn.head.widths", list(heads))])
        arch["head_act"] = trial.suggest_categorical("cnn.head.act", section["head"]["act"])
    return arch
