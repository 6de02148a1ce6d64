"""Backend-neutral greedy generation: one generator over a small backend interface.

:class:`Backend` is what a runtime implements (torch, onnxruntime, TensorRT): run the encoder,
look up token embeddings, run one decoder step with an opaque KV-cache state. :func:`greedy_generate`
does everything else (prompt assembly, left padding, cache growth, stop conditions) the same way for
all of them, through one decode step (:class:`Decoding`) that validation and the benchmark use too, so
two backends that agree on those three calls give the same answers.
"""

from ilora_export.runtime.backend import Backend, Encoded
from ilora_export.runtime.generator import (
    Decoding,
    Generation,
    PromptAssets,
    StepInputs,
    assemble_prompt,
    greedy_generate,
    prompt_inputs,
)

__all__ = [
    "Backend",
    "Decoding",
    "Encoded",
    "Generation",
    "PromptAssets",
    "StepInputs",
    "assemble_prompt",
    "greedy_generate",
    "prompt_inputs",
]
