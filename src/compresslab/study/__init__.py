"""Studies: declarative specs expanded into a DAG of steps run through the run store."""
from compresslab.study.runner import expand, run_study
from compresslab.study.spec import StudySpec, load_spec, parse_spec

__all__ = ["StudySpec", "expand", "load_spec", "parse_spec", "run_study"]
