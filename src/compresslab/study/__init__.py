"""Studies: declarative specs of a registered kind, expanded into steps and run by one template.

>>> spec = load_spec("my-study.yaml")          # any kind: the spec's ``kind`` picks it
>>> results, out = run_kind(spec, "runs")      # resumable; writes results.json + report.html

Kinds: the plain study (no ``kind``), ``kurtosis``, ``kd-functional``, ``moonshine``,
``linear-substitution``, ``compression-functional``, ``blockswap``, ``embedding-compression``,
``dataset-distillation``, ``data-pruning``, ``distilled-pruning`` and ``ner-distill``; add one with
:func:`register_study_kind` (see :mod:`compresslab.study.kinds`).
"""
from compresslab.study import (  # noqa: F401  (register the built-in kinds)
    blockswap,
    compression_functional,
    data_pruning,
    dataset_distillation,
    distilled_pruning,
    embedding,
    kd_functional,
    kurtosis,
    linear_substitution,
    moonshine,
    ner_distill,
    plain,
)
from compresslab.study.kinds import Entry, list_study_kinds, register_study_kind, run_kind, study_kind
from compresslab.study.plain import StudySpec
from compresslab.study.spec import load_spec, parse_spec

__all__ = ["Entry", "StudySpec", "list_study_kinds", "load_spec", "parse_spec", "register_study_kind", "run_kind",
           "study_kind"]
