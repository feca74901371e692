"""`ner`: generate, annotate, verify and evaluate a synthetic NER corpus (:mod:`compresslab.ner`)."""

from pathlib import Path
from typing import Optional

import typer

from compresslab.cli.common import Json, app, emit, print_pairs
from compresslab.console import console, echo, table

ner_app = typer.Typer(
    help="NER distilled from a teacher-labelled synthetic corpus: generate -> annotate -> verify -> "
         "train -> evaluate (docs/ner-distill.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(ner_app, name="ner")


@ner_app.command()
def generate(
    generator: str = typer.Option("template", "--generator", "-g", help="template (offline, from the shipped gazetteers), "
                                  "http://HOST/v1[?model=NAME] (an OpenAI-compatible chat endpoint) or hf:DIR (a local "
                                  "causal LM)."),
    sentences: int = typer.Option(1800, "--sentences", "-n", min=1, help="How many sentences (the paper: 1.8k)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Seed of the generator (and of the later "
                             "train/dev/test split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for corpus.jsonl and generate.json (must not hold a "
                             "corpus yet)."),
    prompt: Optional[Path] = typer.Option(None, "--prompt", help="LLM generators: the prompt template file ({n}: "
                                          "sentences asked for, {species_class}: amphibians, arthropods, birds or "
                                          "fishes). Default: the shipped few-shot prompt."),
    as_json: Json = False,
):
    """Write a tagged corpus of sentences about endangered species (the generator's own
    spans are its first annotation).

    JSON keys: directory, corpus, generator, seed, sentences, tokens, classes, entities,
    prompt, skipped_lines, requests, seconds, example.

    \b
    Examples:
      compresslab ner generate --generator template --sentences 1800 --seed 0 --out ner-run
      compresslab ner generate -g 'http://localhost:8000/v1?model=llama3' -n 200 --prompt my-prompt.txt --out ner-llm
      compresslab ner generate -g hf:models/tiny-gpt2 -n 50 --out ner-local --json
    """
    from compresslab.ner import generate as run

    r = run(generator, sentences, seed, out, prompt)
    emit(r, as_json, lambda r: (
        print_pairs(f"generated {r['sentences']} sentences ({r['generator']})",
                    [("tokens", f"{r['tokens']:,}"), *((f"class {k}", str(v)) for k, v in r["classes"].items()),
                     *((f"entities {k}", str(v)) for k, v in r["entities"].items()),
                     ("seconds", f"{r['seconds']:.2f}")]),
        echo(f"example: {r['example']}", f"corpus: {r['corpus']}; next: compresslab ner annotate {r['directory']}")))


@ner_app.command()
def annotate(
    directory: Path = typer.Argument(..., help="The directory `ner generate` wrote."),
    teacher: str = typer.Option("spans", "--teacher", "-t", help="spans (the generator's own tags), hf:DIR (a "
                                "Hugging Face token classifier) or a compresslab checkpoint directory."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="A checkpoint teacher's training data (its "
                                       "vocabulary and tags); default: the one its run-store step names."),
    as_json: Json = False,
):
    """Label every token with the teacher and write annotated.conll (token TAG per line,
    a blank line between sentences) for review.

    JSON keys: directory, annotated, teacher, sentences, tokens, entities,
    f1_vs_generator_spans, seconds.

    \b
    Examples:
      compresslab ner annotate ner-run --teacher spans
      compresslab ner annotate ner-run --teacher hf:models/bert-ner
      compresslab ner annotate ner-run --teacher runs/train-0123456789abcdef --json
    """
    from compresslab.ner import annotate as run

    r = run(directory, teacher, data=data)
    emit(r, as_json, lambda r: (
        print_pairs(f"annotated {r['sentences']} sentences ({r['teacher']})",
                    [("tokens", f"{r['tokens']:,}"), *((f"entities {k}", str(v)) for k, v in r["entities"].items()),
                     ("entity F1 vs the generator's spans", f"{100 * r['f1_vs_generator_spans']:.2f}%")]),
        echo(f"review {r['annotated']} (change tags only), then: compresslab ner verify {r['directory']} "
             "--corrected FILE")))


@ner_app.command()
def verify(
    directory: Path = typer.Argument(..., help="The directory holding annotated.conll."),
    corrected: Optional[Path] = typer.Option(None, "--corrected", "-c", help="The reviewed copy of annotated.conll "
                                             "(default: annotated.conll as it is)."),
    as_json: Json = False,
):
    """Read the reviewed labels back as gold: count the labels and sentences the review
    changed, score the teacher against the gold, and write gold/train.txt, dev.txt and
    test.txt (train on them with --data conll:DIR/gold).

    JSON keys: directory, reviewed, sentences, tokens, labels_changed, sentences_changed,
    changes (line, token, before, after), teacher_vs_gold, gold, splits, seed, data.

    \b
    Examples:
      compresslab ner verify ner-run --corrected reviewed.conll
      compresslab ner verify ner-run --json
    """
    from compresslab.ner import verify as run

    r = run(directory, corrected)

    def show(r):
        print_pairs(f"review of {r['reviewed']}", [
            ("sentences", str(r["sentences"])), ("tokens", f"{r['tokens']:,}"),
            ("labels changed", str(r["labels_changed"])), ("sentences changed", str(r["sentences_changed"])),
            ("teacher entity F1 vs gold", f"{100 * r['teacher_vs_gold']['micro']['f1']:.2f}%")])
        if r["changes"]:
            t = table("changes (first 10)", ["line", "token", "before", "after"], left=4)
            for c in r["changes"]:
                t.add_row(str(c["line"]), c["token"], c["before"], c["after"])
            console().print(t)
        echo(f"gold: {r['gold']} ({', '.join(f'{k} {v}' for k, v in r['splits'].items())}); "
             f"train on it with --data {r['data']}")

    emit(r, as_json, show)


@ner_app.command()
def evaluate(
    gold: Path = typer.Option(..., "--gold", help="The gold CoNLL file (e.g. DIR/gold/test.txt)."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="Predicted tags for the same sentences (CoNLL)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Or a compresslab checkpoint that tags the "
                                              "gold sentences."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="With --checkpoint: its training data (vocabulary, "
                                       "tags); default: the one its run-store step names."),
    as_json: Json = False,
):
    """Entity-level precision, recall and F1 by exact span match (as seqeval's default
    mode), per type, micro and macro.

    JSON keys: gold, pred or checkpoint, sentences, tokens, token_accuracy, micro, macro,
    per_type ({type: precision, recall, f1, support, predicted, correct}), seconds.

    \b
    Examples:
      compresslab ner evaluate --gold ner-run/gold/test.txt --pred predicted.conll
      compresslab ner evaluate --gold ner-run/gold/test.txt --checkpoint runs/train-0123456789abcdef --json
    """
    from compresslab.ner import evaluate as run

    r = run(gold, pred, checkpoint=checkpoint, data=data)

    def show(r):
        t = table(f"entity scores on {r['gold']} ({r['sentences']} sentences)",
                  ["type", "precision %", "recall %", "F1 %", "gold", "predicted"])
        for name, s in [*r["per_type"].items(), ("micro", r["micro"])]:
            t.add_row(name, f"{100 * s['precision']:.2f}", f"{100 * s['recall']:.2f}", f"{100 * s['f1']:.2f}",
                      str(s["support"]), str(s["predicted"]))
        m = r["macro"]
        t.add_row("macro", f"{100 * m['precision']:.2f}", f"{100 * m['recall']:.2f}", f"{100 * m['f1']:.2f}", "", "")
        console().print(t)
        echo(f"token accuracy {100 * r['token_accuracy']:.2f}%")

    emit(r, as_json, show)
