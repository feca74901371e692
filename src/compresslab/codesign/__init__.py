"""Hardware-aware codesign, the pure parts: the hierarchical search space of the global
architecture search (:mod:`.space`) and Pareto fronts and hypervolumes (:mod:`.pareto`).

Nothing here trains or imports torch; :mod:`compresslab.study.search` runs the search and
:mod:`compresslab.models.searched` builds the sampled networks.
"""
from .pareto import hypervolume, hypervolume_trace, nondominated_ranks, pareto_mask
from .space import Space, load_space, parse_space, sample

__all__ = ["Space", "hypervolume", "hypervolume_trace", "load_space", "nondominated_ranks", "pareto_mask",
           "parse_space", "sample"]
