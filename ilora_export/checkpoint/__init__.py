"""Checkpoint directory format: saving (atomic), validation and loading."""

from ilora_export.checkpoint.format import read_checkpoint, save_checkpoint
from ilora_export.checkpoint.load import LoadedCheckpoint, load_checkpoint

__all__ = ["LoadedCheckpoint", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
