"""Measure compressed models: what they cost (``cost``) and which function they keep (``function``).

Pure, vectorised functions: no I/O, no printing.
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
]
