"""compresslab: compress trained networks and measure which function the child kept.

The Python API on live objects (:mod:`compresslab.live`) is re-exported here and loaded on
first use, so ``import compresslab`` stays light::

    import compresslab
    compresslab.compare(teacher, student, (x, y))
    compresslab.cost(student, x[:1])

``compresslab.compare``, ``cost``, ``prunability``, ``prune``, ``quantize``, ``distill`` and
``train``. ``compresslab.train`` is also the training package (``from compresslab.train
import Recipe``): calling it, ``compresslab.train(model, data, recipe)``, calls
:func:`compresslab.live.train`.
"""
import sys as _sys
from types import ModuleType as _ModuleType

__version__ = "0.1.0"

#: Names of :mod:`compresslab.live` served from the package itself.
_LIVE = ("compare", "cost", "prunability", "prune", "quantize", "distill", "train")


class _TrainPackage(_ModuleType):
    """The ``compresslab.train`` package, callable as :func:`compresslab.live.train`."""

    def __call__(self, model, data, recipe=None, **kwargs):
        from compresslab.live import train

        return train(model, data, recipe, **kwargs)


class _Compresslab(_ModuleType):
    """This package. ``train`` names both the training subpackage and the live function: the
    import system binds the subpackage here when it loads it, and reading the attribute
    returns that subpackage made callable."""

    @property
    def train(self):
        if "_train_package" not in self.__dict__:
            import importlib

            importlib.import_module("compresslab.train")  # binds itself through the setter below
        package = self.__dict__["_train_package"]
        if not isinstance(package, _TrainPackage):
            package.__class__ = _TrainPackage
        return package

    @train.setter
    def train(self, module):
        self.__dict__["_train_package"] = module


_sys.modules[__name__].__class__ = _Compresslab


def __getattr__(name: str):
    if name in _LIVE:
        from compresslab import live

        return getattr(live, name)
    raise AttributeError(f"module 'compresslab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LIVE])
