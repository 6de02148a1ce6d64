import numpy as np
import pytest
import torch

from ilora_export.export.encoder import EncoderWrapper, export_encoder
from tests.factories import make_tiny_ilora, trained_like_layernorms

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")


@pytest.mark.parametrize("gate", ["dense", "resnet"])
def test_encoder_graph_matches_pytorch(gate, tiny_llama_dir, tmp_path):
    model = make_tiny_ilora(tiny_llama_dir, gate=gate)
    trained_like_layernorms(model.sasrec)
    from ilora_export.export.decoder import model_shape

    contract = export_encoder(model, tmp_path / "encoder.onnx", model_shape(model))
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    assert [i.name for i in session.get_inputs()] == list(contract.input_names)
    torch.manual_seed(1)
    seq = torch.randint(0, 50, (3, 10))
    seq[0, 4:] = 50  # padding (pad id = item_num) after 4 real items
    len_seq = torch.tensor([4, 10, 10])
    items = torch.randint(0, 50, (3, 30))  # another batch and item count than the trace
    with torch.no_grad():
        gate_ref, emb_ref, _ = EncoderWrapper(model)(seq, len_seq, items)
        direct = model.sasrec.score_candidates(seq, len_seq, items)  # what the SASRec baseline picks from
    gate_ort, emb_ort, scores_ort = session.run(
        None, {"seq": seq.numpy(), "len_seq": len_seq.numpy(), "items": items.numpy()}
    )
    assert gate_ort.shape == (3, 4) and emb_ort.shape == (3, 30, 64) and scores_ort.shape == (3, 30)
    assert np.abs(gate_ort - gate_ref.numpy()).max() <= 1e-5
    assert np.abs(emb_ort - emb_ref.numpy()).max() <= 1e-5
    assert np.abs(scores_ort - direct.numpy()).max() <= 1e-4
