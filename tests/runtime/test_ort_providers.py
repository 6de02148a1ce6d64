"""The providers an onnxruntime session actually runs on: a session asked for CUDA that onnxruntime
created on the CPU alone (onnxruntime-gpu whose CUDA libraries failed to load) is refused, not run as if
it were on the GPU."""

import pytest

from ilora_export.errors import IloraError

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.fixture(scope="module")
def cpu_session():
    """A real InferenceSession (one Identity node) on the CPU provider."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_cpu_session_passes_for_the_cpu_device(cpu_session):
    from ilora_export.runtime.ort_backend import check_active_providers

    assert cpu_session.get_providers() == ["CPUExecutionProvider"]
    assert check_active_providers(cpu_session, "cpu") == ["CPUExecutionProvider"]


def test_a_session_without_the_cuda_provider_is_refused_for_the_cuda_device(cpu_session):
    from ilora_export.runtime.ort_backend import check_active_providers

    with pytest.raises(IloraError) as info:
        check_active_providers(cpu_session, "cuda")
    assert "CPUExecutionProvider" in str(info.value)  # the providers actually active are named
    assert "--device cpu" in info.value.hint


def test_the_backend_records_the_providers_of_its_decoder_session(tiny_export):
    from ilora_export.runtime.load import open_backend

    backend, _ = open_backend(tiny_export[1], "ort", device="cpu", threads=1)
    assert backend.providers == ["CPUExecutionProvider"]
    assert backend.providers == backend.decoder.get_providers()
