"""The Typer app and what every command shares: option types, output, argument parsing.

Every command has ``--json`` (stable keys on stdout). User errors print one line on
stderr and exit with code 2 (:func:`compresslab.cli.main`).
"""
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from compresslab import device as devices
from compresslab.console import print_pairs  # noqa: F401  (the commands' key/value tables)
from compresslab.device import DEVICE_HELP
from compresslab.errors import UserError

app = typer.Typer(
    name="compresslab",
    help="Compress trained networks and measure which function the child kept.\n\n"
         "Start with `compresslab study` (the default study on MNIST-1D).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

RUNS_HELP = "Run store directory: one sub-directory per finished step, reused on re-runs."
DATA_HELP = ("mnist1d, digits, mnist:DIR, cifar10:DIR, cifar100:DIR, npz:FILE, imagefolder:DIR, conll:DIR, jsonl:FILE, "
             "hf-disk:DIR (options after ?, e.g. conll:DIR?tokenizer=MODEL_DIR&max_len=64; see docs/data.md).")
PRESETS = Path(__file__).parent.parent / "study" / "presets"

# Options every command spells the same way.
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON (stable keys).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Runs = Annotated[Path, typer.Option("--runs", help=RUNS_HELP)]
Device = Annotated[str, typer.Option("--device", help="Where to train and measure: " + DEVICE_HELP)]
Deterministic = Annotated[bool, typer.Option(
    "--deterministic", help="Deterministic algorithms: the same weights for the same seed, device and precision "
    "(slower on GPUs; on CPU results are reproducible anyway).")]
RecipeFile = Annotated[Optional[Path], typer.Option("--recipe", help="YAML file of recipe fields (optimizer, lr, schedule, epochs, ...).")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Override the recipe's epochs.")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Override the recipe's learning rate.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Override the recipe's batch size.")]
Track = Annotated[Optional[str], typer.Option(
    "--track", help="Also log to an experiment tracker after the work: mlflow (./mlruns), mlflow:URI (a directory or "
    "http://HOST:PORT) or tensorboard:DIR; params, metrics, training curves, paths (see docs/tracking.md).")]


def tracker(text: str | None):
    """``--track`` checked before any work: a ``runs.track.Tracker``, or None without the option."""
    from compresslab.runs.track import parse_track

    return parse_track(text)


def track_steps(target, *results: dict) -> None:
    """Log each command result's ``checkpoint`` (a run-store step) to ``target`` (a warning line if it fails)."""
    from compresslab.runs import track

    track.track_steps(target, [(r["checkpoint"], r.get("reused")) for r in results if r])


def seed_option(help: str):
    """``--seed``: a non-negative 32-bit integer; ``help`` says what it seeds."""
    return Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help=help)]


DataSeed = Annotated[Optional[int], typer.Option(
    "--data-seed", min=0, max=2**32 - 1,
    help="Seed of the batch order (and augmentation) alone, when it should differ from --seed, which then "
         "seeds only the initial weights and the validation split (e.g. same init, different data order).")]


def data_option(help: str = DATA_HELP):
    """``--data``/``-d``: a dataset name; ``help`` says what the command uses it for."""
    return Annotated[str, typer.Option("--data", "-d", help=help)]


def on(device: str, deterministic: bool = False):
    """The block runs under this device and determinism (for functions without ``device=``)."""
    return devices.using(devices.Runtime(device, deterministic))


def emit(obj: dict, as_json: bool, human) -> None:
    """``obj`` as JSON on stdout, or ``human(obj)`` for people."""
    if as_json:
        typer.echo(json.dumps(obj, indent=2, sort_keys=True))
    else:
        human(obj)


def parse_options(items: list[str]) -> dict:
    """``k=v`` pairs; values are parsed as YAML scalars/lists (``64``, ``[32, 64]``, ``true``)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r}: expected KEY=VALUE, e.g. --option width=64")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise UserError(f"--input-shape {text!r}: expected sizes like 3x32x32 or 1x40") from None
    if not shape or min(shape) < 1:
        raise UserError(f"--input-shape {text!r}: sizes must be positive, e.g. 3x32x32")
    return shape


def parse_bits(text: str | None, what: str):
    """``4`` -> 4; ``conv=4,linear=8`` -> ``{"conv": 4, "linear": 8}`` (bits per layer type)."""
    if text is None:
        return None
    if "=" not in text:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{what} {text!r}: expected an integer like 4, or per layer type like conv=4,linear=8") from None
    out = parse_options([i.strip() for i in text.split(",") if i.strip()])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in out.values()):
        raise UserError(f"{what} {text!r}: bit widths must be integers, e.g. conv=4,linear=8")
    return out


def parse_loss(text: str | None) -> dict | None:
    """``kd=0.9,ce=0.1,at=1000`` or a YAML mapping ``{kd: 0.9, ce: 0.1}`` -> ``{term: weight}``."""
    import yaml

    if text is None:
        return None
    if "=" in text and not text.lstrip().startswith("{"):
        items = [i.strip() for i in text.split(",") if i.strip()]
        raw = parse_options(items)
    else:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError:
            raw = None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"--loss {text!r}: expected weighted terms like kd=0.9,ce=0.1 or '{{kd: 0.9, ce: 0.1}}'")
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"--loss: weight of {k!r} must be a number, got {v!r}")
    return {str(k): float(v) for k, v in raw.items()}


def parse_count(text: str) -> float:
    """``200k`` / ``1.5M`` / ``250000`` -> a number."""
    t = text.strip().lower()
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise UserError(f"--budget {text!r}: expected a parameter count like 200k, 1.5M or 250000") from None
    if value <= 0:
        raise UserError(f"--budget {text!r}: must be positive")
    return value
