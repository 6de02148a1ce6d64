"""Compatibility with the official iLoRA code: its pickled SASRec and checkpoints, read without running
any code (restricted unpickler), converted to this project's model and checkpoint format."""
