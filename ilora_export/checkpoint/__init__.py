"""Checkpoints: saving (atomic), validation (the format is ``ilora_export.artifacts.checkpoint``) and loading."""

from ilora_export.artifacts.checkpoint import read_checkpoint
from ilora_export.checkpoint.format import save_checkpoint
from ilora_export.checkpoint.load import LoadedCheckpoint, load_checkpoint

__all__ = ["LoadedCheckpoint", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
