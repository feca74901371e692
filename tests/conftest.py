import os

import pytest
import torch

#: Device-parametrised tests run on the CPU everywhere and on CUDA where a GPU exists.
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    """``cuda``-marked tests skip cleanly without a GPU (select them with ``-m cuda``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory):
    """One generated-dataset cache (mnist1d takes ~4 s to generate) for the whole session."""
    if "COMPRESSLAB_CACHE" not in os.environ:
        os.environ["COMPRESSLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


TINY_STUDY = """\
name: tiny
data: mnist1d
parent: {{name: cnn1d, options: {{width: 8, depth: 2, hidden: 16}}}}
recipe: {{optimizer: adam, lr: 0.01, weight_decay: 0, epochs: {epochs}, batch_size: 256}}
children:
  - {{name: kd, method: distill, student: {{name: cnn1d, options: {{width: 4, depth: 2, hidden: 8}}}}}}
  - {{name: pruned, method: prune, amount: 0.5}}
  - {{name: int8, method: quantize}}
controls: {{seeds: [1]}}
latency: false
"""


@pytest.fixture
def tiny_study(tmp_path):
    """A study small enough to run in a few seconds; returns the spec path."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STUDY.format(epochs=2))
    return path


#: ``deterministic(results)``: a study's results.json without wall times, latencies, the store's
#: location and how it ran, ``steps`` as the step dirs: what two runs of one spec must share exactly.
from compresslab.study.kinds import deterministic  # noqa: E402,F401
