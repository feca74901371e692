"""The ``embedding-compression`` study: how small can a re-identification embedding get?

McDermott ("Embedding Compression for Efficient Re-Identification") benchmarks four ways
to shrink the stored vectors (quantisation-aware training, slicing, low rank, iterative
structured pruning) and finds ReID embeddings compress by up to 96x with a minimal drop.
This study measures that on the user's embedder and retrieval data, with replicates:

* for each seed ``s``: a parent embedder trained at ``s`` (``loss``, by default softmax ID
  loss plus batch-hard triplet, with P x K batches), the parent architecture retrained at
  ``1000 + s`` (the *independent* band), and every method of ``methods``:

  ==========  ==============================================================================
  ``slice``   the embedder trained from initialisation with its first ``dims`` dims only
  ``rank``    trained from initialisation with a rank-``dims`` bottleneck (``dims`` stored)
  ``pca``     training-free: the parent's embeddings projected on their top ``dims``
              principal axes (fitted on the training split)
  ``matryoshka``  one embedder per seed trained with the ``matryoshka`` term at every
              ``matryoshka`` method's ``dims`` at once (nested), sliced to each after training
  ``prune``   the parent's dimensions pruned to ``dims`` in ``rounds``, fine-tuned each round
  ``qat``     the embedding fake-quantised to ``bits`` and fine-tuned (after a ``slice`` or
              ``rank`` reduction to ``dims`` when given): the stored codes are packed
  ==========  ==============================================================================

* every model on the test split's query/gallery protocol: mAP and CMC rank-1/5 (same-id
  same-camera gallery items excluded), the bytes it stores per embedding (measured from
  the packed codes), the compression ratio (the parent's bytes over the model's), and how
  much of the parent's geometry it keeps on the gallery (distance rank correlation,
  10-neighbour overlap, CKA); exact-search latency at ``gallery_size`` (first seed);
* per method: mean and 95% bootstrap CI over seeds and the drop in mAP from the parent;
  per family, the ratio at which mAP first falls by more than 1 and 5 points; overall, the
  largest ratio within 1 and within 5 points, and the answer for 96x.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from compresslab.compress.embedding import embedding_quantizer, pack, pca_fit, pca_project, stored_bytes_per_embedding
from compresslab.console import console, echo, table
from compresslab.errors import UserError
from compresslab.measure import stats
from compresslab.measure.retrieval import evaluate, geometry, search_latency
from compresslab.models.embedding import embed
from compresslab.report.embedding import write_embedding_report
from compresslab.runs.store import RunStore, Step
from compresslab.steps import data_of
from compresslab.steps.common import load_model
from compresslab.steps.embedding import embed_prune_spec, embed_qat_spec
from compresslab.steps.specs import data_spec, finetune_recipe, train_spec
from compresslab.study.kinds import Entry, register_study_kind
from compresslab.study.spec import ModelSpec, RunOptions, Strict
from compresslab.train.recipe import Recipe, Seed

OTHER_SEED = 1000
METHODS = ("slice", "rank", "pca", "prune", "qat", "matryoshka")


class Method(Strict):
    method: Literal[METHODS]
    dims: int | None = Field(None, ge=1, description="dims kept (slice, rank, pca, prune, matryoshka; qat: reduce "
                             "first)")
    bits: int | None = Field(None, ge=1, le=16, description="qat: bits per dimension")
    reduce: Literal["slice", "rank"] = Field("slice", description="qat with dims: how the dims are cut first")
    rounds: int = Field(3, ge=1, le=20, description="prune: rounds of pruning and fine-tuning")
    percentile: float = Field(100.0, gt=50, le=100, description="qat: range clip of the calibration")

    @model_validator(mode="after")
    def _fields(self) -> Method:
        if self.method == "qat" and self.bits is None:
            raise ValueError("qat needs bits (1-16)")
        if self.method != "qat" and self.dims is None:
            raise ValueError(f"{self.method} needs dims")
        if self.method != "qat" and self.bits is not None:
            raise ValueError(f"bits belong to qat, not {self.method} (use method: qat with dims for a combination)")
        return self

    @property
    def name(self) -> str:
        if self.method != "qat":
            return f"{self.method}-{self.dims}"
        return f"{self.reduce}-{self.dims}+qat-{self.bits}b" if self.dims else f"qat-{self.bits}b"

    @property
    def family(self) -> str:
        return f"{self.reduce}+qat" if self.method == "qat" and self.dims else self.method


class FineTune(Strict):
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.001, gt=0)


class EmbeddingSpec(RunOptions):
    """An embedding-compression study (``kind: embedding-compression``)."""

    kind: Literal["embedding-compression"]
    name: str = "embedding-compression"
    data: str = "identities:synthetic"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    data_seed: Seed = Field(0, description="seed of the validation split")
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=2)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="embedder"))
    recipe: Recipe = Field(default_factory=lambda: Recipe(optimizer="adam", lr=0.003, weight_decay=0.0, epochs=10,
                                                          batch_size=128, sampler="pk"))
    loss: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "triplet": 1.0})
    finetune: FineTune = Field(default_factory=FineTune)
    methods: list[Method] = Field(min_length=1)
    independent: bool = Field(True, description="the parent architecture retrained from another seed: the band")
    metric: Literal["euclidean", "cosine"] = "euclidean"
    gallery_size: int = Field(100_000, ge=1, description="gallery size of the exact-search latency")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(s >= OTHER_SEED for s in v):
            raise ValueError(f"seeds must be distinct and below {OTHER_SEED}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingSpec:
        if self.model.name != "embedder":
            raise ValueError("model: the parent must be an embedder (name: embedder, options: {backbone: ...})")
        dim = self.model.options.get("dim", 128)
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: the same method twice ({', '.join(sorted(n for n in names if names.count(n) > 1))})")
        for m in self.methods:
            if m.dims is not None and m.dims >= dim:
                raise ValueError(f"{m.name}: dims {m.dims} must be below the parent's {dim} (a slice wider than D)")
        return self


def _steps(spec: EmbeddingSpec, seed: int) -> tuple[Step, dict[str, Step]]:
    """The parent of replicate ``seed`` and ``{model name: step}`` for its other models."""
    data = data_spec(spec.data, spec.val_fraction, spec.data_seed)
    model = spec.model.model_dump()

    def train(options: dict, s: int, label: str) -> Step:
        m = {**model, "options": {**model["options"], **options}}
        return Step("train", train_spec(data, m, spec.recipe, s, loss=spec.loss), label=label)

    ft = finetune_recipe(spec.recipe, epochs=spec.finetune.epochs, lr=spec.finetune.lr)
    parent = train({}, seed, "parent")
    out = {"independent": train({}, OTHER_SEED + seed, "independent")} if spec.independent else {}
    nested = sorted(m.dims for m in spec.methods if m.method == "matryoshka")
    if nested:  # one model for every nested width
        out["matryoshka"] = Step("train", train_spec(data, {**model, "options": {**model["options"], "nested": nested}},
                                                     spec.recipe, seed, loss={**spec.loss, "matryoshka": 1.0}),
                                 label="matryoshka")
    for m in spec.methods:
        if m.method in ("slice", "rank"):
            out[m.name] = train({m.method: m.dims}, seed, m.name)
        elif m.method == "prune":
            out[m.name] = Step("embed-prune", embed_prune_spec(data, m.dims, ft, seed, loss=spec.loss, rounds=m.rounds),
                               parents={"parent": parent}, label=m.name)
        elif m.method == "qat":
            base = train({m.reduce: m.dims}, seed, f"{m.reduce}-{m.dims}") if m.dims else parent
            out[m.name] = Step("embed-qat", embed_qat_spec(data, m.bits, ft, seed, loss=spec.loss,
                                                           percentile=m.percentile),
                               parents={"parent": base}, label=m.name)
    return parent, out


def expand(spec: EmbeddingSpec) -> list[Entry]:
    """Per seed: the parent, the independent retrain, each method's model (PCA has none); the
    reduced models that QAT combinations start from when no method trains them itself."""
    entries = []
    for s in spec.seeds:
        parent, models = _steps(spec, s)
        entries.append(Entry(f"parent@s{s}", "parent", "train", parent, {"seed": s, "model": "parent"}))
        seen = {parent.hash}
        for name, step in models.items():
            for p in step.parents.values():  # a combination's reduced base, when not a method itself
                if p.hash not in seen:
                    seen.add(p.hash)
                    entries.append(Entry(f"{p.label}@s{s}", "control", "train", p, {"seed": s, "model": p.label}))
            seen.add(step.hash)
            entries.append(Entry(f"{name}@s{s}", "control" if name == "independent" else "child", step.kind, step,
                                 {"seed": s, "model": name}))
    return entries


def _check(spec: EmbeddingSpec, source: str) -> None:
    """The data must have a query/gallery split (a retrieval dataset)."""
    from compresslab.steps import dataset

    if not dataset(spec.data, spec.val_fraction, spec.data_seed).meta.get("retrieval"):
        raise UserError(f"{source}: data {spec.data!r} has no query/gallery split; use a retrieval dataset "
                        "(identities:synthetic or market1501:DIR)")


def _stored(model, gallery_emb: torch.Tensor) -> tuple[float, int]:
    """(bytes per stored embedding, bits per dimension): packed codes when the model
    quantises its embedding, else its float dtype."""
    q = embedding_quantizer(model)
    n = len(gallery_emb)
    if q is None:
        return stored_bytes_per_embedding(gallery_emb, n), 8 * gallery_emb.element_size()
    return stored_bytes_per_embedding(pack(q.encode(gallery_emb), q.bits), n), q.bits


def measure(spec: EmbeddingSpec, store: RunStore, entries: list[Entry], progress=None) -> list[dict]:
    """One row per (model, seed): retrieval metrics, stored bytes, geometry against the parent."""
    rows = []
    by_seed: dict[int, list[Entry]] = {}
    for e in entries:
        by_seed.setdefault(e.info["seed"], []).append(e)
    methods = {m.name: m for m in spec.methods}
    with progress.task("measure: retrieval, bytes, geometry") if progress else nullcontext():
        for s, group in by_seed.items():
            parent = group[0]
            data = data_of(parent.step.spec)
            meta = data.meta["retrieval"]  # checked before any step ran (_check)
            nq = meta["n_query"]
            x = data.x_test
            ids, cams = meta["ids_test"], meta["cams_test"]

            def score(name: str, q_emb, g_emb, stored: tuple[float, int], ref=None) -> dict:
                r = evaluate(q_emb, ids[:nq], cams[:nq], g_emb, ids[nq:], cams[nq:], metric=spec.metric)
                row = {"name": name, "seed": s, "mAP": r["mAP"], "rank1": r["cmc"]["rank1"],
                       "rank5": r["cmc"]["rank5"], "n_queries": r["n_queries"],
                       "n_queries_excluded": r["n_queries_excluded"], "dims": int(g_emb.shape[1]),
                       "bytes": stored[0], "bits": stored[1]}
                if ref is not None:
                    g = geometry(ref, g_emb, metric=spec.metric, seed=s)
                    row.update(rank_correlation=g["rank_correlation"], neighbour_overlap=g["neighbour_overlap"],
                               cka=g["cka"])
                return row

            pmodel = load_model(store.path(parent.step))
            pq, pg = embed(pmodel, x[:nq]), embed(pmodel, x[nq:])
            rows.append({**score("parent", pq, pg, _stored(pmodel, pg)), "step": store.path(parent.step).name})
            latency_models = {"parent": (pmodel, pq, pg)}
            for e in group[1:]:
                if e.info["model"] == "matryoshka":  # one model, a row per nested width
                    model = load_model(store.path(e.step))
                    q, g = embed(model, x[:nq]), embed(model, x[nq:])
                    for k in model.nested:
                        rows.append({**score(f"matryoshka-{k}", q[:, :k], g[:, :k], (float(k * 4), 32), ref=pg),
                                     "step": store.path(e.step).name})
                    continue
                if e.info["model"] not in methods and e.info["model"] != "independent":
                    continue  # the base of a combination
                model = load_model(store.path(e.step))
                q, g = embed(model, x[:nq]), embed(model, x[nq:])
                rows.append({**score(e.info["model"], q, g, _stored(model, g), ref=pg),
                             "step": store.path(e.step).name})
                latency_models[e.info["model"]] = (model, q, g)
            train_emb = None
            for m in spec.methods:
                if m.method == "pca":
                    train_emb = embed(pmodel, data.x_train) if train_emb is None else train_emb
                    mean, comp = pca_fit(train_emb, m.dims)
                    q, g = (pca_project(t, mean, comp).float() for t in (pq, pg))
                    rows.append(score(m.name, q, g, (float(m.dims * 4), 32), ref=pg))
            if s == spec.seeds[0]:
                for name, (_, q, g) in latency_models.items():
                    gallery = g.repeat(math.ceil(spec.gallery_size / len(g)), 1)[:spec.gallery_size]
                    lat = search_latency(gallery, q[:256], metric=spec.metric, repeats=3)
                    next(r for r in rows if r["name"] == name and r["seed"] == s)["search_ms_per_query"] = \
                        lat["ms_per_query"]
    return rows


def analyse(spec: EmbeddingSpec, rows: list[dict]) -> dict:
    """Per model: summaries over seeds, the compression ratio, the drop from the parent; the
    ratios where mAP first drops by more than 1 and 5 points; the 96x question."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    families = {m.name: m.family for m in spec.methods}
    parent_bytes = float(np.mean([r["bytes"] for r in rows if r["name"] == "parent"]))
    keys = ("mAP", "rank1", "rank5", "rank_correlation", "neighbour_overlap", "cka")
    summaries = {}
    for n in names:
        group = [r for r in rows if r["name"] == n]
        summ = {"family": families.get(n, n), "n": len(group), "dims": group[0]["dims"], "bits": group[0]["bits"],
                "bytes": float(np.mean([r["bytes"] for r in group]))}
        summ["ratio"] = parent_bytes / summ["bytes"]
        for k in keys:
            vals = [r[k] for r in group if r.get(k) is not None]
            summ[k] = stats.summarize(vals, seed=spec.seeds[0]) if vals else None
        lat = [r["search_ms_per_query"] for r in group if "search_ms_per_query" in r]
        summ["search_ms_per_query"] = lat[0] if lat else None
        summaries[n] = summ
    base = summaries["parent"]["mAP"]["mean"]
    for summ in summaries.values():
        summ["drop_points"] = 100 * (base - summ["mAP"]["mean"])
    compressed = sorted((s["ratio"], n) for n, s in summaries.items() if n not in ("parent", "independent"))
    thresholds = {}  # per family: the first ratio (and model) at which mAP falls by more than 1 / 5 points
    for fam in dict.fromkeys(summaries[n]["family"] for _, n in compressed):
        line = [(r, n) for r, n in compressed if summaries[n]["family"] == fam]
        thresholds[fam] = {str(points): next(([r, n] for r, n in line if summaries[n]["drop_points"] > points), None)
                           for points in (1, 5)}
    within = {str(points): max(([r, n] for r, n in compressed if summaries[n]["drop_points"] <= points),
                               default=None) for points in (1, 5)}
    at96 = [(summaries[n]["drop_points"], r, n) for r, n in compressed if r >= 96]
    best96 = min(at96) if at96 else None
    if best96 is None:
        verdict = "no method reached 96x: the 96x claim was not tested (add methods with higher ratios)"
    else:
        drop, ratio, name = best96
        verdict = (f"96x or more with a minimal drop? The best such model, {name} at {ratio:.0f}x, lost {drop:.1f} "
                   f"points of mAP (parent {100 * base:.1f}%): "
                   + ("reproduced (within 1 point)" if drop <= 1 else "within 5 points, not within 1" if drop <= 5
                      else "not reproduced (more than 5 points)"))
    headline = [f"parent: mAP {100 * base:.1f}%, {parent_bytes:.0f} bytes per embedding", verdict]
    for points, best in within.items():
        headline.append(f"largest ratio within {points} point{'s' * (points != '1')} of the parent's mAP: "
                        + (f"{best[0]:.0f}x ({best[1]})" if best else "none"))
    ind = summaries.get("independent")
    if ind and ind.get("mAP"):
        headline.append(f"an independent retrain of the parent: mAP {100 * ind['mAP']['mean']:.1f}%, "
                        f"10-neighbour overlap with the parent {ind['neighbour_overlap']['mean']:.2f}")
    return {"summaries": summaries, "thresholds": thresholds, "within": within, "verdict_96x": verdict,
            "headline": headline, "parent_bytes": parent_bytes}


def collect(spec: EmbeddingSpec, entries: list[Entry], store: RunStore, progress=None) -> dict:
    rows = measure(spec, store, entries, progress)
    return {"models": rows, **analyse(spec, rows)}


def print_results(results: dict, out: Path) -> None:
    n = len(results["spec"]["seeds"])
    t = table(f"study {results['study']}: retrieval on the test split, mean [95% CI] over {n} seeds",
              ["model", "dims", "bits", "bytes", "ratio", "mAP %", "rank-1 %", "drop", "nbr overlap", "ms/query"],
              left=1)

    def cell(s, pct=True):
        if not s:
            return "–"
        k, d = (100, 1) if pct else (1, 2)
        return f"{k * s['mean']:.{d}f} [{k * s['ci_low']:.{d}f},{k * s['ci_high']:.{d}f}]"

    for name, s in sorted(results["summaries"].items(), key=lambda kv: kv[1]["ratio"]):
        lat = s.get("search_ms_per_query")
        t.add_row(name, str(s["dims"]), str(s["bits"]), f"{s['bytes']:.0f}", f"{s['ratio']:.1f}x", cell(s["mAP"]),
                  cell(s["rank1"]), f"{s['drop_points']:+.1f}", cell(s.get("neighbour_overlap"), False),
                  "–" if lat is None else f"{lat:.4f}")
    console(200).print(t)
    echo(*results["headline"], f"report: {out / 'report.html'}", f"results: {out / 'results.json'}")


register_study_kind("embedding-compression", spec=EmbeddingSpec, expand=expand, collect=collect,
                    report=write_embedding_report, print=print_results, check=_check)
