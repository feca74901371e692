"""Training: recipes, composable losses, and the deterministic ``fit`` loop.

>>> from compresslab.train import Recipe, fit, accuracy
>>> result = fit(model, data, Recipe(epochs=5, lr=0.1), seed=0)
>>> accuracy(model, data.x_val, data.y_val)
"""
from compresslab.train.fit import FitResult, accuracy, evaluate_logits, fit, native_bf16
from compresslab.train.losses import BUILTIN_TERMS, CrossEntropy, Loss, StepContext, Term, compose_loss
from compresslab.train.recipe import Recipe

__all__ = [
    "BUILTIN_TERMS",
    "CrossEntropy",
    "FitResult",
    "Loss",
    "Recipe",
    "StepContext",
    "Term",
    "accuracy",
    "compose_loss",
    "evaluate_logits",
    "fit",
    "native_bf16",
]
