"""Declared contracts of the exported graphs: tensor names, dtypes, axes and the validation tolerance.

A contract is plain data (no torch, no onnx): it is written into ``manifest.json``, read back by every
runtime, and checked against a loaded session before anything runs, so a graph that does not match
what the runtime will feed fails with an :class:`ExportError` naming the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ilora_export.artifacts.bank import graph_input_shapes
from ilora_export.errors import ExportError

# Absolute tolerance on logits when an exported graph is compared with PyTorch fp32 on the same inputs.
# fp32: both sides compute the same fp32 arithmetic in a different order. fp16 graphs are judged by the
# greedy-answer agreement that `verify` reports; their logits bound only catches a broken graph.
LOGITS_ATOL = {"float32": 1e-3, "float16": 0.5}
EMBEDS_ATOL = {"float32": 1e-4, "float16": 1e-2}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``axes`` holds an int for a fixed size, a name for a dynamic one."""

    name: str
    dtype: str  # numpy name: float32, float16, int64
    axes: tuple[int | str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "axes": list(self.axes)}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["axes"]))


@dataclass(frozen=True)
class GraphContract:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerance: dict = field(default_factory=dict)  # output name -> absolute tolerance vs PyTorch fp32

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "tolerance": dict(self.tolerance),
        }

    @classmethod
    def from_dict(cls, d: dict) -> GraphContract:
        return cls(
            d["file"],
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            dict(d.get("tolerance", {})),
        )

    def io_problems(self, inputs, outputs, *, ordered: bool = True) -> list[str]:
        """What differs between this contract and a loaded graph's I/O, each as one sentence.

        ``inputs`` / ``outputs``: [(name, dtype, shape)] as a runtime reports them, dtype as a numpy name,
        a dynamic dim as anything but an int (or -1). ``ordered``: the names must also come in the
        contract's order (onnxruntime lists them as the graph declares them)."""
        problems = []
        for kind, declared, actual in (("input", self.inputs, inputs), ("output", self.outputs, outputs)):
            found = {name: (dtype, shape) for name, dtype, shape in actual}
            names = [name for name, _, _ in actual]
            missing = [t.name for t in declared if t.name not in found]
            extra = [n for n in names if n not in {t.name for t in declared}]
            if missing or extra:
                what = f"missing {missing[:3]}, unexpected {extra[:3]}"
                problems.append(f"graph {kind}s differ from the contract ({what})")
                continue
            if ordered and names != [t.name for t in declared]:
                problems.append(f"{kind}s come in another order than the contract's: {names[:4]}...")
            for t in declared:
                dtype, shape = found[t.name]
                if dtype != t.dtype:
                    problems.append(f"{kind} {t.name} is {dtype}, the contract says {t.dtype}")
                fixed = [
                    (n, s)
                    for n, s in zip(t.axes, shape)
                    if isinstance(n, int) and isinstance(s, int) and s != -1 and n != s
                ]
                if len(shape) != len(t.axes) or fixed:
                    problems.append(f"{kind} {t.name} has shape {list(shape)}, the contract says {list(t.axes)}")
        return problems

    def check_session(self, session) -> None:
        """Raise ExportError unless an onnxruntime session's inputs/outputs match this contract."""
        io = [
            [(a.name, _NUMPY_OF_ORT.get(a.type, a.type), tuple(a.shape)) for a in args]
            for args in (session.get_inputs(), session.get_outputs())
        ]
        problems = self.io_problems(*io)
        if problems:
            raise ExportError(
                f"{self.file}: " + "; ".join(problems[:3]),
                "the graph and manifest.json come from different exports; export again",
            )


_NUMPY_OF_ORT = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class ModelShape:
    """The sizes a contract is built from (read from the model, stored in the manifest)."""

    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    num_experts: int
    bank_shapes: dict  # bank key -> stored shape (artifacts.bank.BankShape.shapes)

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelShape:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


DECODER_FILE = "decoder.onnx"
ENCODER_FILE = "encoder.onnx"


def past_names(num_layers: int, prefix: str = "past_key_values") -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def decoder_contract(shape: ModelShape, dtype: str, *, bake_experts: bool) -> GraphContract:
    """The decoder over a preallocated KV cache (left padding):

    inputs_embeds [B,S,H], cache_position [S] (the cache columns this call writes), row_start [B] (each row's
    first valid column: its left padding), gate_weights [B,K], past [B,kv,C,d] of a fixed capacity C, bank
    -> logits [B,1,V] fp32 and present [B,kv,C,d]: the same cache with the S new columns written, meant to
    be bound to the past's own buffer (written in place)."""
    kv = ("batch", shape.num_kv_heads, "capacity", shape.head_dim)
    inputs = [
        TensorSpec("inputs_embeds", dtype, ("batch", "sequence", shape.hidden_size)),
        TensorSpec("cache_position", "int64", ("sequence",)),
        TensorSpec("row_start", "int64", ("batch",)),
        TensorSpec("gate_weights", dtype, ("batch", shape.num_experts)),
        *[TensorSpec(n, dtype, kv) for n in past_names(shape.num_layers)],
    ]
    if not bake_experts:
        inputs += [TensorSpec(name, dtype, tuple(dims)) for name, dims in graph_input_shapes(shape.bank_shapes)]
    outputs = [
        TensorSpec("logits", "float32", ("batch", 1, shape.vocab_size)),
        *[TensorSpec(n, dtype, kv) for n in past_names(shape.num_layers, "present")],
    ]
    return GraphContract(DECODER_FILE, tuple(inputs), tuple(outputs), {"logits": LOGITS_ATOL[dtype]})


def encoder_contract(shape: ModelShape) -> GraphContract:
    """seq [B,L], len_seq [B], items [B,N] -> gate_weights [B,K], item_embeds [B,N,H], item_scores [B,N].

    Always fp32: the runtime casts the outputs to the decoder's dtype."""
    inputs = (
        TensorSpec("seq", "int64", ("batch", "history")),
        TensorSpec("len_seq", "int64", ("batch",)),
        TensorSpec("items", "int64", ("batch", "items")),
    )
    outputs = (
        TensorSpec("gate_weights", "float32", ("batch", shape.num_experts)),
        TensorSpec("item_embeds", "float32", ("batch", "items", shape.hidden_size)),
        TensorSpec("item_scores", "float32", ("batch", "items")),
    )
    return GraphContract(
        ENCODER_FILE,
        inputs,
        outputs,
        {name: EMBEDS_ATOL["float32"] for name in ("gate_weights", "item_embeds", "item_scores")},
    )
