"""The run store (content-addressed step directories, atomic writes) and checkpoints."""
from compresslab.runs.checkpoint import load_checkpoint, load_foreign_state_dict, save_checkpoint
from compresslab.runs.store import RunStore, Step

__all__ = ["RunStore", "Step", "load_checkpoint", "load_foreign_state_dict", "save_checkpoint"]
