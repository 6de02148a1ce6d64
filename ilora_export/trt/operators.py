"""A CPU-side lint of exported graphs against the operators TensorRT's ONNX parser supports.

The table below is onnx-tensorrt's ``docs/operators.md`` at the 10.1 GA release (branch ``10.1-GA``,
commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c, June 2024; its header reads "TensorRT 10.0 supports
operators in the inclusive range of opset 9 to opset 20"). TensorRT >= 10.1 is assumed; operators
and types that later releases added are not credited.

What a finding is:

- a node whose domain is not the default ONNX domain (``com.microsoft`` contrib ops and the like);
- a node whose op type the table lists as unsupported or does not list at all;
- a node input of an element type the table does not list for that op. The listed types are those
  of the op's data tensors: the inputs sharing the type variable of the op's first input (``Where``:
  of ``X``/``Y``; ``OneHot``: of ``values``), plus the outputs of the casts and of ops without inputs.
  Index, shape and axes inputs are not checked; element types come from ONNX shape inference;
- a default-domain opset outside the supported range;
- a ``ScatterND`` with a ``reduction`` (a restriction the doc states).

Subgraphs (``If``/``Loop``/``Scan`` bodies) are walked; model-local functions are inlined first, as the
parser imports them. Graphs load without their external data: the lint reads structure only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ilora_export.artifacts.manifest import ExportInfo, read_manifest
from ilora_export.lazy import require
from ilora_export.trt.engine import EngineError

SOURCE = "onnx-tensorrt docs/operators.md, 10.1 GA (96e781103cfc4adf4a6bb557e94bac8e693f6f4c)"
OPSETS = (9, 20)  # inclusive range of default-domain opsets

# Supported operators by the element types the doc lists for them (its spelling; ConstantOfShape's
# "INF64" read as INT64).
_BY_TYPES = {
    "FP32 FP16 BF16": """
        Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv ConvTranspose
        Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor GRU Gemm GlobalAveragePool GlobalLpPool
        GlobalMaxPool GroupNormalization HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization
        IsInf LRN LSTM LayerNormalization LeakyRelu Log LogSoftmax LpNormalization LpPool MatMul MaxPool
        MeanVarianceNormalization PRelu ParametricSoftplus Pow QuantizeLinear RNN RandomNormal
        RandomNormalLike RandomUniform RandomUniformLike Reciprocal Resize Round ScaledTanh Scan Selu
        Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample""",
    "FP32 FP16 BF16 INT32 INT64": """
        Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max Min
        Mod Mul Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
        ReduceProd ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth
        Sub Sum TopK""",
    "FP32 FP16 BF16 INT32 INT64 BOOL": """
        Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements GatherND Identity If
        Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze
        Where""",
    "FP32 FP16": "DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign",
    "BOOL": "And Not Or Xor",
    "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL": "Cast CastLike",
    "INT8 FP8 INT4": "DequantizeLinear",
    "FP32 FP16 BF16 INT8 INT32 INT64": "Gelu",
    "FP32 FP16 BF16 FP8 INT32 INT64": "Mean",
}
UNSUPPORTED = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow
    CenterCropPad Col2Im Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    HammingWindow HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
    NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul
    RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
    SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer
    StringSplit TfIdfVectorizer Unique""".split()
)
# The doc's type names as ONNX TensorProto names (TensorRT's FP8 is E4M3).
_ONNX_TYPE = {"FP32": "FLOAT", "FP16": "FLOAT16", "BF16": "BFLOAT16", "FP8": "FLOAT8E4M3FN"}
SUPPORTED: dict[str, frozenset[str]] = {
    op: frozenset(_ONNX_TYPE.get(t, t) for t in types.split()) for types, ops in _BY_TYPES.items() for op in ops.split()
}

# Accepted despite the table: "Op" (any element type) or "Op:TYPE" (ONNX type name) -> why.
ALLOWED = {
    "Clip:INT64": "the Clip importer at the same commit clips INT32/INT64 inputs elementwise; the doc lists "
    "float types only (the encoder clamps its int64 item ids with Clip)",
    "Clip:INT32": "as Clip:INT64",
}

_DATA_INPUT = {"Where": 1, "OneHot": 2}  # index of the input whose type variable the doc's list describes
_OUTPUT_TYPED = frozenset({"Cast", "CastLike", "ConstantOfShape"})  # their list covers the output type too
_DEFAULT_DOMAINS = ("", "ai.onnx")


def lint_graph(model) -> list[str]:
    """Human-readable findings for ``model`` (an ``onnx.ModelProto``, weights loaded or not): one per
    unsupported opset, (op type, domain), (op type, element type) or restriction, naming the first node
    concerned and counting the others; [] when TensorRT's ONNX parser should take the graph."""
    onnx = require("onnx", purpose="the TensorRT operator lint")
    findings = []
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if opset is not None and not OPSETS[0] <= opset <= OPSETS[1]:
        findings.append(f"default-domain opset {opset} is outside {OPSETS[0]}..{OPSETS[1]}")
    if model.functions:
        import onnx.inliner

        model = onnx.inliner.inline_local_functions(model)
    model = onnx.shape_inference.infer_shapes(model)
    first: dict[tuple, str] = {}
    count: dict[tuple, int] = {}
    for where, node, types in _walk(model.graph, "", {}):
        label = f"{where}node {_name(node)} ({node.op_type})"
        for key, message in _node_findings(onnx, node, label, types, opset):
            first.setdefault(key, message)
            count[key] = count.get(key, 0) + 1
    for key, message in first.items():
        others = count[key] - 1
        findings.append(message + (f" (and {others} more node{'s' * (others > 1)})" if others else ""))
    return findings


def lint_export(export) -> dict[str, list[str]]:
    """Findings of ``lint_graph`` for the decoder and encoder graph files of ``export`` (a folder, read
    without hashing its files, or an :class:`ExportInfo`), by graph file name."""
    onnx = require("onnx", purpose="the TensorRT operator lint")
    info = export if isinstance(export, ExportInfo) else read_manifest(export, verify_files=False)
    out = {}
    for contract in (info.decoder, info.encoder):
        out[contract.file] = lint_graph(onnx.load(str(Path(info.path) / contract.file), load_external_data=False))
    return out


def check_export(info: ExportInfo, *, log: Callable[[str], None] = print, shown: int = 5) -> None:
    """EngineError with the first ``shown`` findings of ``lint_export`` if there are any; without the onnx
    package the lint is skipped (logged), as engines build without it."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        log("operator lint skipped: the onnx package is not installed (pip install onnx)")
        return
    findings = [f"{file}: {f}" for file, found in lint_export(info).items() for f in found]
    if findings:
        more = f"; and {len(findings) - shown} more" if len(findings) > shown else ""
        raise EngineError(
            f"{info.path}: {len(findings)} finding(s) against the operators TensorRT's ONNX parser supports "
            f"({SOURCE}): " + "; ".join(findings[:shown]) + more,
            "the graph needs an operator or element type TensorRT's ONNX parser does not support; export with "
            "the default options (ilora-export onnx CHECKPOINT -o DIR [--dtype fp16]), or report it",
        )


def _walk(graph, where: str, outer: dict[str, int]) -> Iterator[tuple[str, object, dict[str, int]]]:
    """(location prefix, node, element type by tensor name in scope) for every node, subgraphs included."""
    types = dict(outer)
    for v in (*graph.input, *graph.value_info, *graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    types.update({t.name: t.data_type for t in graph.initializer})
    types.update({t.values.name: t.values.data_type for t in graph.sparse_initializer})
    for node in graph.node:
        yield where, node, types
        for attr in node.attribute:
            for i, sub in enumerate([attr.g] if attr.HasField("g") else attr.graphs):
                label = attr.name if attr.HasField("g") else f"{attr.name}[{i}]"
                yield from _walk(sub, f"{where}{node.op_type} {_name(node)} > {label} > ", types)


def _name(node) -> str:
    return repr(node.name) if node.name else f"<unnamed, output {node.output[0]!r}>"


def _node_findings(onnx, node, label: str, types: dict[str, int], opset: int | None) -> list[tuple[tuple, str]]:
    """(aggregation key, message) for each problem of ``node``."""
    op, domain = node.op_type, node.domain
    if domain not in _DEFAULT_DOMAINS:
        return [((op, domain), f"{label}: domain {domain!r} is not the default ONNX domain TensorRT's parser imports")]
    if op in ALLOWED:
        return []
    if op not in SUPPORTED:
        listed = "listed as unsupported" if op in UNSUPPORTED else "not in the list"
        return [((op, ""), f"{label}: operator {op} is {listed}")]
    bad: dict[str, list[str]] = {}  # element type -> "input 'x'" ...
    for role, tensor in _typed_tensors(onnx, node, opset):
        elem = types.get(tensor)
        if not elem:
            continue  # no type inferred: nothing to check
        name = onnx.TensorProto.DataType.Name(elem)
        if name not in SUPPORTED[op] and f"{op}:{name}" not in ALLOWED:
            bad.setdefault(name, [])
            if f"{role} {tensor!r}" not in bad[name]:
                bad[name].append(f"{role} {tensor!r}")
    found = [
        (
            (op, "", name),
            f"{label}: element type {name} ({', '.join(where)}); {op} takes {', '.join(sorted(SUPPORTED[op]))}",
        )
        for name, where in bad.items()
    ]
    if op == "ScatterND":
        reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")
        if reduction != "none":
            found.append(((op, "", "reduction"), f"{label}: reduction={reduction!r} is not supported"))
    return found


def _typed_tensors(onnx, node, opset: int | None) -> list[tuple[str, str]]:
    """(input/output, tensor name) of the node's tensors whose element type the table describes."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), "")
    except onnx.defs.SchemaError:
        return []
    formal_in, formal_out = list(schema.inputs), list(schema.outputs)

    def bound(actual, params, key: str | None) -> list[str]:
        """Names in ``actual`` whose formal parameter (the last one repeats when variadic) has type ``key``."""
        variadic = bool(params) and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        names = []
        for i, name in enumerate(actual):
            param = params[i] if i < len(params) else (params[-1] if variadic else None)
            if name and param is not None and param.type_str == key:
                names.append(name)
        return names

    out = []
    if formal_in:
        key = formal_in[min(_DATA_INPUT.get(node.op_type, 0), len(formal_in) - 1)].type_str
        out += [("input", n) for n in bound(node.input, formal_in, key)]
    if formal_out and (not formal_in or node.op_type in _OUTPUT_TYPED):
        out += [("output", n) for n in bound(node.output, formal_out, formal_out[0].type_str)]
    return out
