"""Measure compressed models: what they cost (``cost``) and which function they keep (``function``).

Pure, vectorised functions: no I/O, no printing. Further submodules, imported by name:
``pairwise`` (every output metric for all pairs of M models), ``cka`` (streaming linear
CKA), ``adversarial`` (FGSM/PGD transfer rates), ``stats`` (bootstrap CIs, tests, Holm,
verdicts), ``weights`` and ``landscape``.
"""

from compresslab.measure.cost import (
    COUNTED_LAYERS,
    cost_report,
    count_bops,
    count_macs,
    count_nonzero,
    count_params,
    latency,
    layer_costs,
    model_bytes,
    model_bytes_fp32,
)
from compresslab.measure.function import (
    accuracy,
    activation_distance,
    agreement,
    cohen_kappa,
    compare_logits,
    disagreement,
    js_divergence,
    kl_divergence,
    output_cosine,
    softmax_probs,
)
from compresslab.measure.weights import (
    PRUNABILITY_KEYS,
    cosine_curve,
    flat_params,
    kurtosis_of_kurtoses,
    p_star,
    param_cosine,
    pearson_kurtosis,
    per_tensor_kurtosis,
    plot_prunability,
    prunability,
    safe_amount,
)

__all__ = [
    "COUNTED_LAYERS",
    "accuracy",
    "activation_distance",
    "agreement",
    "cohen_kappa",
    "compare_logits",
    "cost_report",
    "count_bops",
    "count_macs",
    "count_nonzero",
    "count_params",
    "disagreement",
    "js_divergence",
    "kl_divergence",
    "latency",
    "layer_costs",
    "model_bytes",
    "model_bytes_fp32",
    "output_cosine",
    "softmax_probs",
    "PRUNABILITY_KEYS",
    "cosine_curve",
    "flat_params",
    "kurtosis_of_kurtoses",
    "p_star",
    "param_cosine",
    "pearson_kurtosis",
    "per_tensor_kurtosis",
    "plot_prunability",
    "prunability",
    "safe_amount",
]
