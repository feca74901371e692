"""Models from the ecosystem: Hugging Face transformers, timm and torchvision.

Model names (``create_model`` dispatches on the prefix, see :func:`prefixed_factory`):

* ``hf:DIR``: a local Hugging Face model directory (``config.json`` + weights, as
  ``save_pretrained`` or ``huggingface-cli download NAME --local-dir DIR`` writes it),
  loaded by ``AutoModelForTokenClassification`` (``head="token"``) or
  ``AutoModelForSequenceClassification`` (``head="sequence"``) with
  ``num_labels = num_classes``. A head of another size is replaced by a fresh one, so a
  pretrained body (or a NER model with other tags) gets a head for this data.
* ``hf-config:FILE.json``: an untrained model built from a config file (a student).
* ``bert``: a registered untrained BERT whose size is given by options (``hidden``,
  ``layers``, ``heads``, ...), so a preset names a student without a file path.
* ``timm:NAME`` (``timm.create_model``) and ``torchvision:NAME``
  (``torchvision.models.get_model``), untrained, when those packages import.

Every Hugging Face model is wrapped in :class:`HFClassifier`: one tensor of token ids in,
one tensor of logits out, as every loop in compresslab expects. Its checkpoint config
records the whole Hugging Face config (``options["config"]``), so a checkpoint rebuilds
without the original directory or file.

A text dataset (``Dataset.text``) fills in what a model needs to know about its
tokenizer: :func:`text_model_options` passes ``vocab_size``, ``pad_id`` and
``head="sequence"`` to factories that take them, and :func:`check_text_model` refuses a
model whose embedding is smaller than the data's vocabulary.

Nothing here imports transformers, timm or torchvision until a model needs them.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresslab.errors import UserError

from .features import transformer_blocks
from .registry import register_model

#: Classification heads: one prediction per token (NER) or one per sequence.
HEADS = ("token", "sequence")
#: Name prefixes :func:`prefixed_factory` resolves.
PREFIXES = ("hf:", "hf-config:", "timm:", "torchvision:")
#: Keys of a Hugging Face config dict that say nothing about the architecture: dropped
#: when it is recorded (the labels come from ``num_classes``).
_UNRECORDED = ("_name_or_path", "transformers_version", "id2label", "label2id", "architectures", "dtype",
               "torch_dtype", "num_labels")


class HFClassifier(nn.Module):
    """A Hugging Face classification model as a compresslab model.

    ``forward(input_ids)`` takes token ids ``(B, L)`` (int64; a float tensor of whole
    numbers is cast back) and returns the logits: ``(B, L, C)`` with ``head="token"``,
    ``(B, C)`` with ``head="sequence"``. The attention mask is ``input_ids != pad_id``,
    so padded positions are never attended to.

    ``hf`` is the transformers model itself (its state dict keys are prefixed ``hf.``).
    The class attributes tell the rest of compresslab how to feed and count it:
    ``input_dtype`` (inputs are token ids below :attr:`vocab_size`, see
    :func:`compresslab.ort.example_input`) and ``activation_matmuls`` (its attention
    multiplies activations by activations outside any Linear layer, which
    :mod:`compresslab.measure.cost` then counts).
    """

    input_dtype = torch.int64
    activation_matmuls = True

    def __init__(self, hf: nn.Module, head: str = "token", pad_id: int | None = None):
        super().__init__()
        if head not in HEADS:
            raise UserError(f"head {head!r}: use one of {', '.join(HEADS)}")
        self.hf = hf
        self.head = head
        configured = getattr(hf.config, "pad_token_id", None)
        self.pad_id = int(pad_id if pad_id is not None else configured if configured is not None else 0)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: every token id must be below this."""
        return int(self.hf.get_input_embeddings().num_embeddings)

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the position embedding covers (None when unbounded)."""
        return getattr(self.hf.config, "max_position_embeddings", None)

    @property
    def feature_points(self) -> dict[str, str]:
        """The transformer's layers, ``layer0``, ``layer1``, ... -> ``hf.<base>.encoder.layer.<i>``
        for a BERT: each one's output is ``(B, L, hidden)``."""
        return {name: f"hf.{path}" for name, path in transformer_blocks(self.hf).items()}

    def sync_structure(self) -> None:
        """Make every attention module's head count agree with its projections' widths
        (after structured pruning removed heads, or a checkpoint rebuilt them narrower)."""
        sync_attention(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids if not input_ids.is_floating_point() else input_ids.round()
        ids = ids.long()
        out = self.hf(input_ids=ids, attention_mask=(ids != self.pad_id).long())
        return out.logits if hasattr(out, "logits") else out[0]

    def extra_repr(self) -> str:
        return f"head={self.head!r}, pad_id={self.pad_id}"


# --------------------------------------------------------------------------- transformers


#: Loggers that speak while transformers imports its model code where torchao is installed
#: (torchao's optional kernels, torch's pytree deprecation notes): silenced for that import.
_NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


def _transformers():
    levels = {name: logging.getLogger(name).level for name in _NOISY_IMPORT_LOGGERS}
    try:
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        import transformers
        import transformers.modeling_utils  # noqa: F401  (the import that pulls torchao in)
    except ImportError as e:
        raise UserError(f"Hugging Face models need transformers ({e}); pip install 'compresslab[hf]'") from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return transformers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers logs advice (a fresh head, unused weights) at warning level and draws
    progress bars while loading; the user asked for exactly that, so keep it off the screen."""
    hf_logging = _transformers().utils.logging
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _auto_class(head: str):
    if head not in HEADS:
        raise UserError(f"head {head!r}: use one of {', '.join(HEADS)} (token: one label per token, e.g. NER; "
                        "sequence: one label per text)")
    t = _transformers()
    return t.AutoModelForTokenClassification if head == "token" else t.AutoModelForSequenceClassification


def config_dict(config) -> dict:
    """A Hugging Face config as the JSON dict a checkpoint records (labels and paths left out)."""
    full = json.loads(config.to_json_string(use_diff=False))
    return {k: v for k, v in full.items() if k not in _UNRECORDED}


def _config_from_dict(what: str, d: dict, num_classes: int, **overrides: Any):
    if not isinstance(d, dict) or "model_type" not in d:
        raise UserError(f"{what}: a Hugging Face config needs a 'model_type' (e.g. \"bert\"); got keys "
                        f"{sorted(d)[:8] if isinstance(d, dict) else type(d).__name__}")
    fields = {k: v for k, v in d.items() if k not in _UNRECORDED and k != "model_type"}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return _transformers().AutoConfig.for_model(d["model_type"], num_labels=num_classes, **fields)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{what}: not a config transformers can build ({str(e).splitlines()[0][:160]})") from None


def _from_config(what: str, config, head: str) -> nn.Module:
    auto = _auto_class(head)
    try:
        with _quiet():
            return auto.from_config(config)
    except ValueError as e:
        raise UserError(f"{what}: transformers has no {head}-classification model for model_type "
                        f"{config.model_type!r} ({str(e).splitlines()[0][:120]})") from None


def _wrap(hf: nn.Module, head: str, pad_id: int | None, input_shape, record: bool = True) -> HFClassifier:
    """``hf`` wrapped; with ``record``, its config goes into the checkpoint config (see
    ``create_model``: a factory's ``compresslab_record`` joins the recorded options)."""
    model = HFClassifier(hf, head, pad_id)
    limit = model.max_positions
    if input_shape and len(input_shape) == 1 and limit and input_shape[0] > limit:
        raise UserError(f"sequences of {input_shape[0]} tokens are longer than the model's {limit} positions; "
                        f"shorten them (max_len={limit}) or use a model with more positions")
    if record:
        model.compresslab_record = {"config": config_dict(hf.config)}
    return model


def hf_dir_model(num_classes: int, in_channels: int, input_shape=None, *, source: str, head: str = "token",
                 pad_id: int | None = None, config: dict | None = None) -> HFClassifier:
    """``hf:DIR``: the model in a local directory, its head sized for ``num_classes``.

    With ``config`` (what a checkpoint records) the architecture is built from it, untrained,
    and the directory is not read: the checkpoint's weights are loaded next.
    """
    if config is not None:
        return _wrap(_from_config(f"hf:{source}", _config_from_dict(f"hf:{source}", config, num_classes), head),
                     head, pad_id, input_shape)
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(f"model 'hf:{source}': no directory {source}; compresslab loads Hugging Face models "
                        f"from disk only: on a connected machine run `huggingface-cli download {source} "
                        f"--local-dir DIR`, copy DIR here and pass --model hf:DIR")
    if not (path / "config.json").is_file():
        raise UserError(f"model 'hf:{source}': {path} has no config.json; pass a directory written by "
                        "save_pretrained or `huggingface-cli download NAME --local-dir DIR`")
    auto = _auto_class(head)
    try:
        with _quiet():
            hf = auto.from_pretrained(str(path), num_labels=num_classes, ignore_mismatched_sizes=True,
                                      local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"model 'hf:{source}': transformers cannot load it as a {head} classifier "
                        f"({str(e).strip().splitlines()[0][:160]})") from None
    return _wrap(hf, head, pad_id, input_shape)


def hf_config_model(num_classes: int, in_channels: int, input_shape=None, *, source: str, head: str = "token",
                    pad_id: int | None = None, vocab_size: int | None = None,
                    config: dict | None = None) -> HFClassifier:
    """``hf-config:FILE.json``: an untrained model from a config file; ``vocab_size`` (from
    the data, or given) overrides the file's."""
    what = f"hf-config:{source}"
    if config is None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"model {what!r}: config file {source} not found; pass a config.json, e.g. one "
                            "written by BertConfig(...).save_pretrained(DIR)")
        try:
            config = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"model {what!r}: {source} is not JSON ({e})") from None
    cfg = _config_from_dict(what, config, num_classes, vocab_size=vocab_size)
    return _wrap(_from_config(what, cfg, head), head, pad_id, input_shape)


@register_model("bert")
def bert(num_classes: int, in_channels: int, input_shape=None, hidden: int = 128, layers: int = 2, heads: int = 2,
         intermediate: int | None = None, head: str = "token", max_positions: int = 512, vocab_size: int = 30522,
         pad_id: int = 0, dropout: float = 0.1) -> HFClassifier:
    """An untrained BERT (``BertFor{Token,Sequence}Classification``): ``layers`` encoder
    layers of width ``hidden`` with ``heads`` attention heads and a feed-forward width of
    ``intermediate`` (default ``4 * hidden``). ``vocab_size`` and ``pad_id`` come from a
    text dataset when it is given (``--data``)."""
    if hidden % heads:
        raise UserError(f"bert: hidden={hidden} must be a multiple of heads={heads}")
    t = _transformers()
    config = t.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                          max_position_embeddings=max_positions, pad_token_id=pad_id, num_labels=num_classes,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return _wrap(_from_config("bert", config, head), head, pad_id, input_shape, record=False)  # options rebuild it


# --------------------------------------------------------------------------- timm, torchvision


def _import(package: str):
    try:
        return __import__(package)
    except Exception as e:  # ImportError, or a wheel whose operators do not load (torchvision::nms)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{package} models need {package}, which does not import here ({first[:160]}); "
                        f"install a {package} built for this torch ({torch.__version__})") from None


def timm_model(num_classes: int, in_channels: int, *, source: str, **options: Any) -> nn.Module:
    """``timm:NAME``: ``timm.create_model(NAME, num_classes=..., in_chans=..., **options)``,
    untrained unless ``pretrained=True`` (which needs the weights in timm's cache)."""
    timm = _import("timm")
    if not timm.is_model(source):
        raise UserError(f"model 'timm:{source}': timm has no such model; list them with "
                        "python -c \"import timm; print(timm.list_models('resnet*'))\"")
    try:
        model = timm.create_model(source, num_classes=num_classes, in_chans=in_channels, **options)
    except (RuntimeError, TypeError, ValueError, OSError) as e:
        raise UserError(f"model 'timm:{source}' could not be built with {options} "
                        f"({str(e).strip().splitlines()[0][:160]})") from None
    model.activation_matmuls = True  # vision transformers multiply activations outside Linear layers
    return model


def torchvision_model(num_classes: int, in_channels: int, *, source: str, **options: Any) -> nn.Module:
    """``torchvision:NAME``: ``torchvision.models.get_model(NAME, num_classes=..., **options)``,
    untrained (``weights=None``) unless options say otherwise. torchvision's models take
    3 input channels."""
    tv = _import("torchvision")
    if in_channels != 3:
        raise UserError(f"model 'torchvision:{source}' takes 3 input channels, the data has {in_channels}; "
                        "use timm:NAME (it has in_chans) or RGB data")
    options.setdefault("weights", None)
    try:
        model = tv.models.get_model(source, num_classes=num_classes, **options)
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        raise UserError(f"model 'torchvision:{source}' could not be built with {options} "
                        f"({str(e).strip().splitlines()[0][:160]}); see torchvision.models.list_models()") from None
    model.activation_matmuls = True
    return model


def prefixed_factory(name: str) -> tuple[Callable[..., nn.Module], dict[str, Any]] | None:
    """``(factory, fixed keyword arguments)`` for a name with one of :data:`PREFIXES`
    (``hf:DIR`` -> the directory as ``source``), else None."""
    for prefix, factory in (("hf:", hf_dir_model), ("hf-config:", hf_config_model), ("timm:", timm_model),
                            ("torchvision:", torchvision_model)):
        if name.startswith(prefix):
            source = name[len(prefix):]
            if not source:
                raise UserError(f"model {name!r}: give what follows {prefix!r}, e.g. {prefix}"
                                f"{'DIR' if prefix == 'hf:' else 'FILE.json' if prefix == 'hf-config:' else 'NAME'}")
            return factory, {"source": source}
    return None


# --------------------------------------------------------------------------- text data


def text_model_options(name: str, text: dict | None, options: dict) -> dict:
    """``options`` plus what a text dataset's ``meta["text"]`` (``text``) tells the model:
    ``vocab_size``, ``pad_id`` and, for sequence-level labels, ``head="sequence"``, each
    only for a factory that takes it and only when ``options`` does not set it. Without
    text data, ``options`` unchanged."""
    if not text:
        return dict(options)
    from .registry import _option_params, _resolve

    _, factory, fixed = _resolve(name)
    params, _, _ = _option_params(factory, fixed)
    wanted = {"vocab_size": text.get("vocab_size"), "pad_id": text.get("pad_id"),
              "head": "sequence" if text.get("level") == "sequence" else None}
    out = dict(options)
    for key, value in wanted.items():
        if key in params and key not in out and value is not None:
            out[key] = value
    return out


def check_text_model(model: nn.Module, text: dict | None) -> None:
    """Refuse a model that cannot embed the data's token ids: a one-line UserError when
    the data's ``vocab_size`` exceeds the model's embedding rows, or its sequences exceed
    the model's positions. Models that do not take token ids pass."""
    if not text or not isinstance(getattr(model, "vocab_size", None), int):
        return
    data_vocab, rows = int(text["vocab_size"]), int(model.vocab_size)
    if data_vocab > rows:
        raise UserError(f"tokenizer/model vocabulary mismatch: data ids go up to {data_vocab - 1} but the model "
                        f"embeds {rows}; use the model's own tokenizer (tokenizer=DIR in the data name) or a model "
                        f"built for this vocabulary")
    limit, length = getattr(model, "max_positions", None), text.get("max_len")
    if limit and length and int(length) > int(limit):
        raise UserError(f"sequences of {length} tokens are longer than the model's {limit} positions; "
                        f"set max_len={limit} in the data name")


# --------------------------------------------------------------------------- attention heads


def _attention_modules(model: nn.Module) -> Iterator[nn.Module]:
    """BERT-style self-attention modules (BERT, RoBERTa, ELECTRA, ...): Linear ``query``,
    ``key`` and ``value`` and an int ``num_attention_heads`` and ``attention_head_size``."""
    for module in model.modules():
        if (all(isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value"))
                and isinstance(getattr(module, "num_attention_heads", None), int)
                and isinstance(getattr(module, "attention_head_size", None), int)):
            yield module


class AttentionHeads:
    """What structured pruning needs to remove whole attention heads of a transformer:
    ``num_heads`` (each query/key/value Linear -> its layer's head count, Torch-Pruning's
    ``num_heads``) and ``keep`` (module path -> why it is left whole: every other Linear that
    writes the hidden width, so the residual stream and the embeddings keep their size)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.num_heads: dict[nn.Linear, int] = {}
        projections: set[nn.Module] = set()
        hidden: set[int] = set()
        for module in _attention_modules(model):
            for lin in (module.query, module.key, module.value):
                self.num_heads[lin] = module.num_attention_heads
                projections.add(lin)
            hidden.add(module.query.in_features)
        self.keep = {path: "writes the transformer's hidden width (kept whole)" for path, m in model.named_modules()
                     if isinstance(m, nn.Linear) and m not in projections and m.out_features in hidden}

    def __bool__(self) -> bool:
        return bool(self.num_heads)

    def update(self) -> None:
        """Record the head counts left after pruning on the attention modules."""
        sync_attention(self.model)


def attention_heads(model: nn.Module) -> AttentionHeads | None:
    """:class:`AttentionHeads` of ``model``, or None when it has no attention module
    compresslab knows (then structured pruning treats it as any other network)."""
    heads = AttentionHeads(model)
    return heads if heads else None


def sync_attention(model: nn.Module) -> None:
    """Set every attention module's head count (and its total head width) from its query
    projection's width, at an unchanged head size: what a model with pruned heads, or one
    rebuilt narrower from a checkpoint's ``structure``, must say about itself."""
    for module in _attention_modules(model):
        module.num_attention_heads = module.query.out_features // module.attention_head_size
        if hasattr(module, "all_head_size"):
            module.all_head_size = module.query.out_features
