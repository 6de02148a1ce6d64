"""Backend validation: it decodes through the generator's shared step, so it compares exactly the calls that
generation makes, and a backend whose decode steps go wrong is refused."""

import numpy as np
import pytest

from ilora_export.checkpoint import load_checkpoint
from ilora_export.errors import ValidationError
from ilora_export.export.validate import compare_backends, sample_rows
from ilora_export.runtime.generator import greedy_generate
from ilora_export.runtime.load import checkpoint_assets
from ilora_export.runtime.torch_backend import TorchBackend
from tests.factories import make_tiny_checkpoint
from tests.runtime.recording import RecordingBackend

STATE_SIZE = 10  # the tiny SASRec's history length


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir, toy_data_dir, tmp_path_factory):
    ckpt = make_tiny_checkpoint(tiny_llama_dir, toy_data_dir, tmp_path_factory.mktemp("ck") / "ckpt")
    loaded = load_checkpoint(ckpt)
    return loaded.model, checkpoint_assets(loaded)


def test_validation_sees_the_logits_generation_computes(loaded):
    model, assets = loaded
    reference, candidate = RecordingBackend(TorchBackend(model)), RecordingBackend(TorchBackend(model), "again")
    report = compare_backends(
        reference,
        candidate,
        assets,
        STATE_SIZE,
        decode_steps=3,
        tolerance={"logits": 0.0, "gate_weights": 0.0, "item_embeds": 0.0, "item_scores": 0.0},
    )
    assert report["prefill_logits_max_abs"] == report["decode_logits_max_abs"] == 0.0
    assert report["greedy_token_agreement"] == 1.0 and len(reference.calls) == len(candidate.calls) == 4

    builder = assets.prompt_builder()
    batch = builder.collate([builder.encode(*row) for row in sample_rows(assets.catalogue, STATE_SIZE)])
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # rows of several lengths: left padding in play
    generated = RecordingBackend(TorchBackend(model))
    greedy_generate(generated, batch, assets.stop_rule(), assets.token_ids, max_new_tokens=4)
    assert len(generated.calls) == 4
    for validated, again, made in zip(reference.calls, candidate.calls, generated.calls):
        for field in ("embeds", "cache_position", "row_start", "gate_weights", "logits"):
            np.testing.assert_array_equal(getattr(validated, field), getattr(made, field), err_msg=field)
            np.testing.assert_array_equal(getattr(again, field), getattr(made, field), err_msg=field)


class _ShiftedDecode(RecordingBackend):
    """Places every decoded token one position too far (prefill untouched)."""

    def step(self, embeds, cache_position, row_start, gate_weights, state):
        return super().step(embeds, cache_position + (state is not None), row_start, gate_weights, state)


def test_a_wrong_decode_step_is_refused(loaded):
    model, assets = loaded
    with pytest.raises(ValidationError, match="disagrees with torch: logits max") as err:
        compare_backends(
            TorchBackend(model),
            _ShiftedDecode(TorchBackend(model), "shifted"),
            assets,
            STATE_SIZE,
            tolerance={"logits": 1e-5},
            strict_argmax=False,
        )
    assert err.value.report["prefill_logits_max_abs"] == 0.0 and err.value.report["decode_logits_max_abs"] > 1e-3
