"""Training: recipes, losses composed from registered terms, and the deterministic ``fit`` loop.

>>> from compresslab.train import Recipe, fit, accuracy
>>> result = fit(model, data, Recipe(epochs=5, lr=0.1), seed=0)
>>> accuracy(model, data.x_val, data.y_val)
"""
from compresslab.train.fit import FitResult, accuracy, default_loss, evaluate_logits, fit, native_bf16
from compresslab.train.losses import (
    CrossEntropy,
    Loss,
    StepContext,
    Term,
    TermFactory,
    compose_loss,
    get_term_factory,
    list_terms,
    register_term,
    require_teacher,
)
from compresslab.train.recipe import Recipe

__all__ = [
    "CrossEntropy",
    "FitResult",
    "Loss",
    "Recipe",
    "StepContext",
    "Term",
    "TermFactory",
    "accuracy",
    "compose_loss",
    "default_loss",
    "evaluate_logits",
    "fit",
    "get_term_factory",
    "list_terms",
    "native_bf16",
    "register_term",
    "require_teacher",
]
