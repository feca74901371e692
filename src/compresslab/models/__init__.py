"""Model zoo: build models by name, record their configs, capture named features.

>>> m = create_model("cnn1d", num_classes=10, in_channels=1, input_shape=(1, 40))
>>> m2 = build_from_config(model_config(m))
>>> with capture_features(m, ["stage1"]) as feats:
...     m(x)
"""

from . import braggnn, cnn1d, convnet, embedding, hf, lenet, mlp, resnet, searched, sequence, soft_tree, wrn  # noqa: F401  (register the families)
from .features import capture_features, feature_points
from .registry import (
    build_from_config,
    create_model,
    describe_options,
    list_models,
    model_config,
    register_model,
    register_pattern,
)

__all__ = [
    "build_from_config",
    "capture_features",
    "create_model",
    "describe_options",
    "feature_points",
    "list_models",
    "model_config",
    "register_model",
    "register_pattern",
]
