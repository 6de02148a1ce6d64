"""TensorRT optimization profiles checked against the exported graphs themselves (no TensorRT needed).

For every profile of both graphs, at its min, opt and max shapes: each named axis takes one value across
the profile's inputs, fixed axes equal the graph's static sizes, min <= opt <= max, and ONNX shape inference
over the graph, fed those concrete input shapes, determines every output to the shape the manifest's
contract promises (``present.*`` exactly the past's shape). The checkers are plain functions returning the
problems they find, and are shown to find them on deliberately broken profiles.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ilora_export.artifacts.contract import GraphContract, TensorSpec
from ilora_export.artifacts.manifest import read_manifest
from ilora_export.trt.profiles import Limits, engine_profiles

POINTS = ("min", "opt", "max")
LIMITS = [
    Limits(),
    Limits(max_batch=3, max_prompt=40, max_new_tokens=5, num_candidates=7),
    Limits(max_batch=1, max_prompt=1, max_new_tokens=1, num_candidates=1),  # every range collapses
]


# --------------------------------------------------------------------------------------------
# The checkers


def _dims(value_info) -> list[int | str | None] | None:
    """A graph tensor's dims: an int when static, the symbol's name, None when unknown (None: rank unknown)."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _symbols(contract: GraphContract, graph_dims: dict, name: str, axis: int) -> set[str]:
    """The names an input axis goes by: the contract's axis name and the graph's dim_param, where named."""
    names = {contract.input(name).axes[axis]} if name in contract.input_names else set()
    dims = graph_dims.get(name) or []
    if axis < len(dims):
        names.add(dims[axis])
    return {n for n in names if isinstance(n, str)}


def axis_problems(model: onnx.ModelProto, contract: GraphContract, profile: dict) -> list[str]:
    """What TensorRT would reject or mis-build in ``profile`` ({input: (min, opt, max)}) for ``model``."""
    graph_dims = {vi.name: _dims(vi) for vi in model.graph.input}
    problems = []
    if set(profile) != set(graph_dims):
        problems.append(
            f"profile inputs differ from the graph's: missing {sorted(set(graph_dims) - set(profile))}, "
            f"extra {sorted(set(profile) - set(graph_dims))}"
        )
    ranked = {}
    for name, shapes in profile.items():
        dims = graph_dims.get(name)
        axes = contract.input(name).axes if name in contract.input_names else None
        if dims is None or axes is None or any(len(s) != len(dims) or len(s) != len(axes) for s in shapes):
            problems.append(f"{name}: profile shapes {shapes}, graph dims {dims}, contract axes {axes}")
            continue
        ranked[name] = shapes
        for i, (lo, opt, hi) in enumerate(zip(*shapes)):
            if not lo <= opt <= hi:
                problems.append(f"{name} axis {i}: min {lo}, opt {opt}, max {hi} are not ordered")
            for fixed, what in ((dims[i], "graph"), (axes[i], "contract")):
                if isinstance(fixed, int) and {lo, opt, hi} != {fixed}:
                    problems.append(f"{name} axis {i} is {fixed} in the {what}; the profile gives {(lo, opt, hi)}")
    for k, point in enumerate(POINTS):
        seen: dict[str, dict[int, list[str]]] = {}
        for name, shapes in ranked.items():
            for i, size in enumerate(shapes[k]):
                for symbol in _symbols(contract, graph_dims, name, i):
                    seen.setdefault(symbol, {}).setdefault(size, []).append(name)
        for symbol, values in seen.items():
            if len(values) > 1:
                found = "; ".join(f"{size} in {names}" for size, names in sorted(values.items()))
                problems.append(f"{point}: axis {symbol!r} takes {len(values)} values ({found})")
    return problems


def symbol_sizes(model: onnx.ModelProto, contract: GraphContract, profile: dict, k: int) -> dict[str, int]:
    """Each axis name's size at point ``k`` (the first one seen: :func:`axis_problems` reports any other)."""
    graph_dims = {vi.name: _dims(vi) for vi in model.graph.input}
    sizes: dict[str, int] = {}
    for name, shapes in profile.items():
        for i, size in enumerate(shapes[k]):
            for symbol in _symbols(contract, graph_dims, name, i):
                sizes.setdefault(symbol, size)
    return sizes


def output_problems(
    model: onnx.ModelProto,
    contract: GraphContract,
    profile: dict,
    k: int,
    *,
    data_prop: bool = True,
    fallbacks: list[str] | None = None,
) -> list[str]:
    """Shape inference over ``model`` with the inputs pinned to ``profile``'s shapes at point ``k``: every
    output must come out fully determined and equal to the contract's axes resolved at that point.

    A dim inference leaves open falls back to the graph's declared output dim: a static size, or a symbol
    whose size the inputs fix (each such dim is appended to ``fallbacks``)."""
    point = POINTS[k]
    sizes = symbol_sizes(model, contract, profile, k)
    declared = {vi.name: _dims(vi) or [] for vi in model.graph.output}
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    del pinned.graph.value_info[:]  # nothing symbolic left over from the export
    for vi in pinned.graph.input:
        if vi.name in profile:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for size in profile[vi.name][k]:
                shape.dim.add().dim_value = size
    for vi in pinned.graph.output:
        vi.type.tensor_type.ClearField("shape")  # inference must find the outputs' shapes itself
    try:
        inferred = onnx.shape_inference.infer_shapes(pinned, strict_mode=True, data_prop=data_prop)
    except onnx.shape_inference.InferenceError as err:
        return [f"{point}: shape inference fails: {str(err).strip()[:400]}"]
    outputs = {vi.name: vi for vi in inferred.graph.output}
    problems = []
    for spec in contract.outputs:
        expected = tuple(a if isinstance(a, int) else sizes.get(a) for a in spec.axes)
        if None in expected:
            problems.append(f"{point}: {spec.name} axes {spec.axes} name an axis no input has")
            continue
        if spec.name not in outputs:
            problems.append(f"{point}: {spec.name} is not an output of the graph")
            continue
        elem = outputs[spec.name].type.tensor_type.elem_type
        if elem == TensorProto.UNDEFINED or helper.tensor_dtype_to_np_dtype(elem) != np.dtype(spec.dtype):
            problems.append(f"{point}: {spec.name} comes out as {TensorProto.DataType.Name(elem)}, not {spec.dtype}")
        decl_dims = declared.get(spec.name, [])
        dims = _dims(outputs[spec.name])
        if dims is None:  # rank unknown: every dim from the declaration
            dims = [None] * len(decl_dims)
        shape = []
        for i, dim in enumerate(dims):
            if isinstance(dim, int):
                shape.append(dim)
                continue
            decl = decl_dims[i] if i < len(decl_dims) else None
            size = decl if isinstance(decl, int) else sizes.get(decl) if isinstance(decl, str) else None
            if size is None:
                problems.append(f"{point}: {spec.name} axis {i} is undetermined (inferred {dim!r}, declared {decl!r})")
                size = -1
            elif fallbacks is not None:
                fallbacks.append(f"{point}: {spec.name}[{i}] = {decl!r} = {size}")
            shape.append(size)
        if tuple(shape) != expected:
            problems.append(f"{point}: {spec.name} comes out {tuple(shape)}, the contract says {expected}")
        if spec.name.startswith("present."):  # written in place: exactly the past's buffer
            past = profile.get(spec.name.replace("present.", "past_key_values.", 1))
            if past is None or tuple(shape) != tuple(past[k]):
                problems.append(f"{point}: {spec.name} is {tuple(shape)}, its past is {past and past[k]}")
    return problems


def decoder_problems(model: onnx.ModelProto, contract: GraphContract, profiles: dict) -> list[str]:
    """Prefill writes at most its capacity (capacity >= sequence); decode feeds one token (sequence 1)."""
    problems = []
    for k, point in enumerate(POINTS):
        prefill = symbol_sizes(model, contract, profiles["prefill"], k)
        decode = symbol_sizes(model, contract, profiles["decode"], k)
        if prefill["capacity"] < prefill["sequence"]:
            problems.append(f"prefill {point}: capacity {prefill['capacity']} < sequence {prefill['sequence']}")
        if decode["sequence"] != 1:
            problems.append(f"decode {point}: sequence {decode['sequence']}, not one token")
    return problems


def all_problems(model, contract, profile, *, data_prop=True, fallbacks=None) -> list[str]:
    problems = axis_problems(model, contract, profile)
    for k in range(len(POINTS)):
        problems += output_problems(model, contract, profile, k, data_prop=data_prop, fallbacks=fallbacks)
    return problems


# --------------------------------------------------------------------------------------------
# The real export's profiles


@pytest.fixture(scope="module")
def export(tiny_export):
    """(manifest info, {graph: its ONNX model without weights}) of the tiny export."""
    info = read_manifest(tiny_export[1])
    models = {g: onnx.load(str(info.path / f"{g}.onnx"), load_external_data=False) for g in ("encoder", "decoder")}
    return info, models


@pytest.mark.parametrize("limits", LIMITS, ids=["defaults", "b3-p40-n5-c7", "all-ones"])
def test_every_profile_is_consistent_with_its_graph(export, limits):
    info, models = export
    profiles = engine_profiles(info, limits)
    assert list(profiles) == ["encoder", "decoder"] and list(profiles["decoder"]) == ["prefill", "decode"]
    for graph, contract in (("encoder", info.encoder), ("decoder", info.decoder)):
        for name, profile in profiles[graph].items():
            problems = all_problems(models[graph], contract, profile)
            assert problems == [], f"{graph}/{name} under {limits}:\n" + "\n".join(problems)
    decoder = profiles["decoder"]
    assert decoder_problems(models["decoder"], info.decoder, decoder) == []
    # the max shapes reach the limits: what the runtime binds (BindingPlan) must fit every profile it picks
    for graph, profile in [("encoder", profiles["encoder"]["encoder"]), *(("decoder", p) for p in decoder.values())]:
        contract = getattr(info, graph)
        top = symbol_sizes(models[graph], contract, profile, 2)
        assert top["batch"] == limits.max_batch
        if graph == "decoder":
            assert top["capacity"] == limits.max_prompt + limits.max_new_tokens
    assert symbol_sizes(models["decoder"], info.decoder, decoder["prefill"], 2)["sequence"] == limits.max_prompt
    history = info.manifest["model"]["state_size"]
    assert symbol_sizes(models["encoder"], info.encoder, profiles["encoder"]["encoder"], 2)["items"] == (
        history + limits.num_candidates
    )


# --------------------------------------------------------------------------------------------
# The checkers find what they are meant to find


def _with(profile: dict, name: str, k: int, axis: int, size: int) -> dict:
    """``profile`` with ``name``'s shape at point ``k`` changed on one axis."""
    shapes = [list(s) for s in profile[name]]
    shapes[k][axis] = size
    return profile | {name: tuple(tuple(s) for s in shapes)}


def test_checkers_report_broken_profiles(export):
    info, models = export
    model, contract = models["decoder"], info.decoder
    good = engine_profiles(info, Limits(max_batch=3, max_prompt=40, max_new_tokens=5))["decoder"]
    prefill = good["prefill"]
    assert all_problems(model, contract, prefill) == []

    # batch 2 for the embeddings, 3 for everything else (at max)
    split = _with(prefill, "inputs_embeds", 2, 0, 2)
    problems = axis_problems(model, contract, split)
    assert any(p.startswith("max: axis 'batch' takes 2 values (2 in ['inputs_embeds']; 3 in [") for p in problems)
    assert not any(p.startswith(("min:", "opt:")) for p in problems)
    # the graph itself refuses the split batch: inference fails or an output disagrees with the contract
    assert output_problems(model, contract, split, 2) != [] and output_problems(model, contract, split, 1) == []

    # one layer's cache capacity differs from the others' (at opt)
    problems = axis_problems(model, contract, _with(prefill, "past_key_values.1.value", 1, 2, 7))
    assert any("opt: axis 'capacity' takes 2 values" in p and "7 in ['past_key_values.1.value']" in p for p in problems)

    # a fixed axis (the expert bank's rank) resized, and min > opt
    problems = axis_problems(model, contract, _with(prefill, "bank.lora_A.q_proj", 0, 2, 4))
    assert any(p.startswith("bank.lora_A.q_proj axis 2 is 8 in the graph") for p in problems)
    problems = axis_problems(model, contract, _with(prefill, "row_start", 0, 0, 1000))
    assert any(p.startswith("row_start axis 0: min 1000, opt 1, max 3 are not ordered") for p in problems)

    # decode fed two tokens; prefill's capacity below its sequence
    broken = {
        "prefill": _resize(prefill, contract, "capacity", 2, 30),
        "decode": _resize(good["decode"], contract, "sequence", 2, 2),
    }
    assert decoder_problems(model, contract, broken) == [
        "prefill max: capacity 30 < sequence 40",
        "decode max: sequence 2, not one token",
    ]

    # a contract promising another logits shape than the graph computes
    wrong = GraphContract(
        contract.file,
        contract.inputs,
        (TensorSpec("logits", "float32", ("batch", "sequence", info.shape.vocab_size)), *contract.outputs[1:]),
    )
    problems = output_problems(model, wrong, prefill, 2)
    assert problems == [
        f"max: logits comes out (3, 1, {info.shape.vocab_size}), the contract says (3, 40, {info.shape.vocab_size})"
    ]


def _resize(profile: dict, contract: GraphContract, axis: str, k: int, size: int) -> dict:
    """``profile`` with every axis the contract names ``axis`` set to ``size`` at point ``k``."""
    out = dict(profile)
    for name in profile:
        for i, a in enumerate(contract.input(name).axes):
            if a == axis:
                out = _with(out, name, k, i, size)
    return out


def _reshape_model(output_dims: list) -> onnx.ModelProto:
    """y = Reshape(x, Shape(x)): without data propagation, inference leaves y's dims open."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_undetermined_outputs_fall_back_to_the_declared_symbols():
    contract = GraphContract(
        "reshape.onnx",
        (TensorSpec("x", "float32", ("batch", 4)),),
        (TensorSpec("y", "float32", ("batch", 4)),),
    )
    profile = {"x": ((1, 4), (5, 4), (9, 4))}
    declared = _reshape_model(["batch", 4])
    fallbacks: list[str] = []
    assert all_problems(declared, contract, profile, fallbacks=fallbacks) == [] and fallbacks == []
    assert all_problems(declared, contract, profile, data_prop=False, fallbacks=fallbacks) == []
    assert fallbacks == [
        f"{p}: y[{i}] = {d!r} = {s}" for p, b in zip(POINTS, (1, 5, 9)) for i, d, s in ((0, "batch", b), (1, 4, 4))
    ]
    # declared with a symbol no input carries: the dim stays undetermined, and the checker says so
    problems = output_problems(_reshape_model(["rows", 4]), contract, profile, 1, data_prop=False)
    assert problems[0].startswith("opt: y axis 0 is undetermined (inferred ") and "declared 'rows'" in problems[0]
