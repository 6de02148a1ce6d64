"""The operator lint against onnx-tensorrt's supported-operator table (CPU only)."""

import json
import shutil

import pytest

from ilora_export.artifacts.manifest import MANIFEST, read_manifest, write_manifest
from ilora_export.fileio import sha256_file
from ilora_export.trt.build import SCRIPT, build_engines
from ilora_export.trt.engine import EngineError
from ilora_export.trt.operators import SUPPORTED, UNSUPPORTED, lint_export, lint_graph

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

F32, I64, F64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.DOUBLE, TensorProto.BOOL


def _model(nodes, inputs, outputs, *, opset=20, functions=(), domains=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def test_table_has_the_ops_graphs_are_built_from():
    for op in ("ScatterND", "Range", "Where", "Expand", "Trilu", "GatherND", "Softmax", "Cast", "Clip"):
        assert op in SUPPORTED
    assert SUPPORTED["MatMul"] == {"FLOAT", "FLOAT16", "BFLOAT16"}
    assert "INT64" in SUPPORTED["ConstantOfShape"] and "BOOL" in SUPPORTED["Where"]
    assert {"Unique", "BitShift", "SequenceAt"} <= UNSUPPORTED and not UNSUPPORTED & set(SUPPORTED)


def test_fresh_exports_have_no_findings(tiny_export, tmp_path):
    from ilora_export.export.package import export_checkpoint

    fp16 = export_checkpoint(tiny_export[0], tmp_path / "fp16", dtype="fp16")
    for folder in (tiny_export[1], fp16):
        info = read_manifest(folder)
        assert lint_export(folder) == {info.decoder.file: [], info.encoder.file: []}


def test_index_and_shape_inputs_are_not_held_to_the_data_types():
    # Where's BOOL condition, Gather's and ScatterND's INT64 indices, Reshape's INT64 shape: all fine
    nodes = [
        helper.make_node("Where", ["c", "x", "x"], ["w"], name="where"),
        helper.make_node("Gather", ["w", "i"], ["g"], name="gather"),
        helper.make_node("ScatterND", ["g", "j", "u"], ["s"], name="scatter"),
        helper.make_node("Shape", ["s"], ["shape"], name="shape"),
        helper.make_node("Reshape", ["s", "shape"], ["y"], name="reshape"),
    ]
    inputs = [("c", BOOL, [2, 3]), ("x", F32, [2, 3]), ("i", I64, [2]), ("j", I64, [1, 1]), ("u", F32, [1, 3])]
    assert lint_graph(_model(nodes, inputs, [("y", F32)])) == []


def test_unsupported_operators_are_reported_by_node():
    nodes = [
        helper.make_node("FastGelu", ["x"], ["a"], name="fast_gelu", domain="com.microsoft"),
        helper.make_node("Unique", ["x"], ["b"], name="uniq"),
        helper.make_node("Unique", ["x"], ["c"], name="uniq2"),
        helper.make_node("Relu", ["x"], ["d"], name="fine"),
    ]
    model = _model(
        nodes, [("x", F32, [4])], [("a", F32), ("b", F32), ("c", F32), ("d", F32)], domains=["com.microsoft"]
    )
    found = lint_graph(model)
    assert len(found) == 2
    assert "node 'fast_gelu' (FastGelu)" in found[0] and "'com.microsoft'" in found[0]
    assert "node 'uniq' (Unique)" in found[1] and "listed as unsupported" in found[1] and "1 more node" in found[1]


def test_unsupported_element_types_are_reported_by_node():
    # the INT64 input of the MatMul is known only through shape inference (the Cast's output)
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], name="to_int", to=I64),
        helper.make_node("MatMul", ["xi", "xi"], ["m"], name="int_matmul"),
        helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=F64),
        helper.make_node("Where", ["c", "x", "x"], ["w"], name="where"),
        helper.make_node("Equal", ["c", "c"], ["e"], name="bool_equal"),
    ]
    model = _model(nodes, [("x", F32, [2, 2]), ("c", BOOL, [2, 2])], [("m", I64), ("xd", F64), ("w", F32), ("e", BOOL)])
    found = lint_graph(model)
    assert len(found) == 3
    assert "node 'int_matmul' (MatMul): element type INT64 (input 'xi')" in found[0]
    assert "node 'to_double' (Cast): element type DOUBLE (output 'xd')" in found[1]
    assert "node 'bool_equal' (Equal): element type BOOL (input 'c')" in found[2]


def test_subgraphs_functions_opset_and_scatter_reduction():
    inner = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"], name="inner_unique")],
        "then",
        [],
        [helper.make_tensor_value_info("y", F32, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"], name="inner_id")],
        "else",
        [],
        [helper.make_tensor_value_info("z", F32, None)],
    )
    branch = helper.make_node("If", ["c"], ["r"], name="branch", then_branch=inner, else_branch=other)
    found = lint_graph(_model([branch], [("c", BOOL, []), ("x", F32, [3])], [("r", F32)]))
    assert len(found) == 1 and "If 'branch' > then_branch > node 'inner_unique' (Unique)" in found[0]

    body = helper.make_node("BitShift", ["a", "a"], ["b"], name="shift", direction="LEFT")
    func = helper.make_function("local", "Shift", ["a"], ["b"], [body], [helper.make_opsetid("", 20)])
    call = helper.make_node("Shift", ["x"], ["y"], name="call", domain="local")
    found = lint_graph(
        _model([call], [("x", TensorProto.UINT8, [3])], [("y", TensorProto.UINT8)], functions=[func], domains=["local"])
    )
    assert len(found) == 1 and "(BitShift)" in found[0]  # the function body is linted, not the call

    scatter = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="scatter_add", reduction="add")
    inputs = [("x", F32, [4]), ("i", I64, [1, 1]), ("u", F32, [1])]
    found = lint_graph(_model([scatter], inputs, [("y", F32)], opset=21))
    assert found[0] == "default-domain opset 21 is outside 9..20"
    assert "node 'scatter_add' (ScatterND): reduction='add'" in found[1] and len(found) == 2


def test_build_engines_refuses_a_graph_with_an_unsupported_operator(tiny_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export[1], export)
    info = read_manifest(export)
    graph = export / info.decoder.file
    model = onnx.load(str(graph), load_external_data=False)
    node = next(n for n in model.graph.node if n.op_type == "MatMul")
    node.domain = "com.microsoft"  # now a contrib op TensorRT's parser does not import
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(graph))
    manifest = json.loads((export / MANIFEST).read_text())
    manifest["files"][info.decoder.file] = sha256_file(graph)
    write_manifest(export / MANIFEST, manifest)

    out = tmp_path / "eng"
    with pytest.raises(
        EngineError, match=rf"{info.decoder.file}: node '{node.name}' \(MatMul\).*com\.microsoft"
    ) as err:
        build_engines(export, out, emit_script=True, log=lambda m: None)
    assert "does not support" in err.value.hint
    assert not out.exists() and not (out / SCRIPT).exists()
