"""ilora-export: fine-tune, export and evaluate iLoRA (instance-wise LoRA) LLM recommenders."""

from __future__ import annotations

__version__ = "0.1.0"

from ilora_export.errors import IloraError

__all__ = ["IloraError", "load_checkpoint", "__version__"]


def __getattr__(name):
    # Keep `import ilora_export` light: torch is imported only when the checkpoint API is used.
    if name == "load_checkpoint":
        from ilora_export.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(name)
