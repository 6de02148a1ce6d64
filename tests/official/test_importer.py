"""Importing official iLoRA checkpoints: logits against a literal re-implementation of the official forward."""

import argparse
import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from ilora_export.checkpoint import load_checkpoint
from ilora_export.data.llara import load_dataset
from ilora_export.data.prompts import default_templates
from ilora_export.errors import CheckpointError, UnsafePickleError
from ilora_export.model.gating import ResNetGate
from ilora_export.model.prompting import PromptBuilder
from ilora_export.model.sasrec import SASRec
from ilora_export.official.importer import import_official
from tests.factories import trained_like_layernorms

PROJS = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
R, K, ALPHA, D_REC = 8, 4, 32.0, 16
BASE_VOCAB = 49152  # the tiny Llama uses SmolLM2's tokenizer
# An official-style prompt file: the lines end with the space before the answer (prompt/artist.txt does),
# one has spaces and a tab around it.
OFFICIAL_PROMPTS = (
    "This user has listened to [HistoryHere] in the previous. The candidates are [CansHere]. The answer is \n"
    "  Given [HistoryHere], recommend one of [CansHere]. The recommendation is \t\n"
)


def _linear_shapes(config):
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def official_state(config, *, num_experts=K, router=True, r=R, width=None, seed=0):
    """An official-layout state_dict (key names exactly as the official Lightning checkpoint)."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    shapes = _linear_shapes(config)
    for i in range(config.num_hidden_layers):
        for proj, block in PROJS.items():
            fan_in, fan_out = shapes[proj]
            if width is not None and fan_in == config.hidden_size:
                fan_in = width
            pre = f"llama_model.base_model.model.model.layers.{i}.{block}.{proj}"
            sd[f"{pre}.lora_A.default.weight"] = torch.randn(r, fan_in, generator=g) * 0.1
            sd[f"{pre}.lora_B.default.weight"] = torch.randn(fan_out, r, generator=g) * 0.1
            if router:
                sd[f"{pre}.gating.default.linear_layer.weight"] = torch.randn(num_experts, D_REC, generator=g)
    sd["projector.mlp_proj.0.weight"] = torch.randn(config.hidden_size, D_REC, generator=g) * 0.2
    sd["projector.mlp_proj.0.bias"] = torch.randn(config.hidden_size, generator=g) * 0.1
    sd["projector.mlp_proj.2.weight"] = torch.randn(config.hidden_size, config.hidden_size, generator=g) * 0.1
    sd["projector.mlp_proj.2.bias"] = torch.randn(config.hidden_size, generator=g) * 0.1
    if router:
        gate = ResNetGate(D_REC, num_experts)
        for name, t in gate.state_dict().items():
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):  # not saved officially
                sd[f"router.{name}"] = torch.randn(t.shape, generator=g) * 0.3 + (
                    1.0 if "bn" in name and name.endswith("weight") else 0
                )
    return sd


def save_lightning(path, sd, **hparams):
    torch.save(
        {
            "epoch": 4,
            "global_step": 1000,
            "pytorch-lightning_version": "1.9.5",
            "state_dict": sd,
            "hyper_parameters": argparse.Namespace(lora_r=R, lora_alpha=ALPHA, lora_dropout=0.1, **hparams),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def official(tiny_llama_dir, toy_data_dir, tmp_path_factory):
    from transformers import AutoConfig

    root = tmp_path_factory.mktemp("official")
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    sasrec = SASRec(load_dataset(toy_data_dir).catalogue.num_items, hidden=D_REC, state_size=10)
    trained_like_layernorms(sasrec)
    torch.save(sasrec.state_dict(), root / "rec.pt")
    sd = official_state(config)
    ckpt = save_lightning(root / "official.ckpt", sd)
    (root / "prompt.txt").write_text(OFFICIAL_PROMPTS, encoding="utf-8")
    out = import_official(
        ckpt,
        root / "rec.pt",
        str(tiny_llama_dir),
        root / "imported",
        data_dir=toy_data_dir,
        prompt_file=root / "prompt.txt",
        log=lambda m: None,
    )
    return root, config, sd, sasrec.eval(), out


@pytest.fixture(scope="module")
def official_export(official):
    """The imported checkpoint exported to ONNX (fp32, bank as inputs), loaded."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[test])")
    from ilora_export.export.package import export_checkpoint
    from ilora_export.runtime.load import load_export

    root, *_, out = official
    return load_export(export_checkpoint(out, root / "onnx"))


# ------------------------------------------------ a literal re-implementation of the official forward


def official_router(sd, user):  # [B, d] -> [B, K]; BatchNorm with mean 0 / var 1 as the official test run
    def bn(x, pre):
        n = x.shape[1]
        return F.batch_norm(x, torch.zeros(n), torch.ones(n), sd[f"{pre}.weight"], sd[f"{pre}.bias"], False, 0.0, 1e-5)

    x = F.relu(bn(F.conv1d(user[:, None, :], sd["router.conv1.weight"], padding=1), "router.bn1"))
    for stage, stride in (("layer1", 1), ("layer2", 2), ("layer3", 2)):
        for b in range(3):
            pre = f"router.{stage}.{b}"
            s = stride if b == 0 else 1
            out = F.relu(bn(F.conv1d(x, sd[f"{pre}.conv1.weight"], stride=s, padding=1), f"{pre}.bn1"))
            out = bn(F.conv1d(out, sd[f"{pre}.conv2.weight"], padding=1), f"{pre}.bn2")
            short = x
            if short.shape != out.shape:  # option A: every 2nd position, zero channels half before, half after
                extra = out.shape[1] - x.shape[1]
                short = F.pad(x[:, :, ::2], (0, 0, extra // 2, extra - extra // 2))
            x = F.relu(out + short)
    pooled = x.mean(-1)  # [B, 64]
    return F.softmax(F.linear(pooled, sd["router.gate.fc.weight"], sd["router.gate.fc.bias"]), -1)


def calculate_b(x, A, B, gate, scaling, k):
    """The official MoE-LoRA update: per-expert outputs B_k A_k x weighted by the gate."""
    sub = A.shape[0] // k
    out = 0
    for e in range(k):
        a_e, b_e = A[e * sub : (e + 1) * sub], B[:, e * sub : (e + 1) * sub]  # [r/K, in], [out, r/K]
        out = out + gate[:, e].view(-1, 1, 1) * (x @ a_e.T @ b_e.T)
    return scaling * out


def official_logits(base_dir, tokenizer_dir, sd, sasrec, input_ids, seq, len_seq, cands, k=K, router=True):
    from transformers import AutoTokenizer, LlamaForCausalLM

    llm = LlamaForCausalLM.from_pretrained(base_dir).eval()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    llm.resize_token_embeddings(len(tok), mean_resizing=False)
    user = sasrec.user_representation(seq, len_seq)
    gate = official_router(sd, user) if router else torch.ones(seq.shape[0], 1)
    scaling = ALPHA / (R / k)
    hooks = []
    for i, layer in enumerate(llm.model.layers):
        for proj, block in PROJS.items():
            pre = f"llama_model.base_model.model.model.layers.{i}.{block}.{proj}"
            A, B = sd[f"{pre}.lora_A.default.weight"], sd[f"{pre}.lora_B.default.weight"]
            module = getattr(getattr(layer, block), proj)
            hooks.append(
                module.register_forward_hook(
                    lambda m, inp, out, A=A, B=B: out + calculate_b(inp[0], A, B, gate, scaling, k)
                )
            )

    def project(e):
        h = F.gelu(F.linear(e, sd["projector.mlp_proj.0.weight"], sd["projector.mlp_proj.0.bias"]))
        return F.linear(h, sd["projector.mlp_proj.2.weight"], sd["projector.mlp_proj.2.bias"])

    embeds = llm.get_input_embeddings()(input_ids).clone()  # [1, S, H]
    hist_id, cans_id = tok.convert_tokens_to_ids("[HistoryEmb]"), tok.convert_tokens_to_ids("[CansEmb]")
    h = c = 0
    for pos, t in enumerate(input_ids[0].tolist()):  # placeholders in prompt order
        if t == hist_id:
            embeds[0, pos] = project(sasrec.item_embeddings(seq[0, h]))
            h += 1
        elif t == cans_id:
            embeds[0, pos] = project(sasrec.item_embeddings(cands[0, c]))
            c += 1
    logits = llm(inputs_embeds=embeds).logits[:, -1]
    for hk in hooks:
        hk.remove()
    # The added tokens' embedding rows are not trained nor saved by the official code (their init is
    # arbitrary there): compare the logits of the base vocabulary.
    return logits[:, :BASE_VOCAB]


def _prompt(loaded, toy_data_dir):
    ds = load_dataset(toy_data_dir)
    row = ds.split("test").iloc[0]
    cands = list(range(20))
    enc = PromptBuilder(loaded.model.tokenizer, loaded.catalogue.title, default_templates())
    return enc.collate([enc.encode(list(row["seq"]), int(row["len_seq"]), cands)])


@torch.no_grad()
def test_imported_model_matches_the_official_forward(official, tiny_llama_dir, toy_data_dir):
    root, _, sd, sasrec, out = official
    loaded = load_checkpoint(out)
    assert loaded.model.token_ids["[PAD]"] == 49152 and loaded.model.token_ids["[ItemEmb]"] == 49156
    assert loaded.model.spec.scaling == 16.0 and loaded.model.spec.gate == "resnet"
    batch = _prompt(loaded, toy_data_dir)
    ours = loaded.model(batch.input_ids, batch.attention_mask, batch.seq, batch.len_seq, batch.candidates).logits[:, -1]
    ref = official_logits(
        tiny_llama_dir, out / "tokenizer", sd, sasrec, batch.input_ids, batch.seq, batch.len_seq, batch.candidates
    )
    assert (ref - ours[:, :BASE_VOCAB]).abs().max() <= 1e-5
    shuffled = loaded.model(
        batch.input_ids, batch.attention_mask, batch.seq, batch.len_seq, batch.candidates.roll(1, 1)
    ).logits[:, -1]
    assert (ours - shuffled).abs().max() > 1e-3  # the item embeddings matter


@torch.no_grad()
def test_imported_model_matches_the_official_forward_in_onnxruntime(
    official, official_export, tiny_llama_dir, toy_data_dir
):
    from ilora_export.runtime.generator import StepInputs, assemble_prompt
    from ilora_export.runtime.ort_backend import OrtBackend

    root, _, sd, sasrec, out = official
    export = official_export
    backend = OrtBackend(export)
    batch = _prompt(load_checkpoint(out), toy_data_dir)
    embeds, gate, _ = assemble_prompt(backend, batch, export.assets.token_ids)
    inputs = StepInputs.prefill(embeds, batch.attention_mask.numpy(), gate)
    logits, _ = backend.step(embeds, inputs.cache_position, inputs.row_start, gate, None)
    ref = official_logits(
        tiny_llama_dir, out / "tokenizer", sd, sasrec, batch.input_ids, batch.seq, batch.len_seq, batch.candidates
    )
    assert abs(ref.numpy() - logits[:, :BASE_VOCAB]).max() <= 1e-5


def official_prompt_lines(path):
    """The official loader of a prompt file: every line, stripped."""
    with open(path) as f:
        return [p.strip() for p in f.read().splitlines()]


def official_prompt_text(template, history_titles, candidate_titles):
    """The official collater's prompt: each slot filled with ``title [..Emb]`` joined by ", "."""
    history = ", ".join(t + " [HistoryEmb]" for t in history_titles)
    candidates = ", ".join(t + " [CansEmb]" for t in candidate_titles)
    return template.replace("[HistoryHere]", history).replace("[CansHere]", candidates)


def _rows(toy_data_dir, n=4):
    from ilora_export.data.evalset import build_eval_set

    return build_eval_set(load_dataset(toy_data_dir), "test", seed=0).rows[:n]


def test_imported_prompts_are_built_as_the_official_code_builds_them(official, toy_data_dir):
    """The stored templates are the prompt file's lines stripped (no space before the answer), so the
    prompt ids are the official ones; generation bans EOS at the first step, as the official one does."""
    from ilora_export.runtime.load import checkpoint_assets

    root, *_, out = official
    templates = [p for p in official_prompt_lines(root / "prompt.txt") if p]
    loaded = load_checkpoint(out)
    assert loaded.templates.templates == tuple(templates)
    assert loaded.info.config["prompts"]["style"] == "official"
    assets = checkpoint_assets(loaded)
    builder, tok, title = assets.prompt_builder(), loaded.model.tokenizer, loaded.catalogue.title
    for r in _rows(toy_data_dir):
        text = official_prompt_text(templates[0], [title(i) for i in r.history], [title(c) for c in r.candidates])
        assert builder.encode(r.seq, r.len_seq, r.candidates).input_ids == tok(text)["input_ids"]
    assert assets.min_new_tokens == 1 and assets.stop_rule().min_new_tokens == 1


def test_a_prompt_file_given_at_evaluation_is_read_as_the_official_loader_reads_it(official, toy_data_dir):
    """``eval --prompt-file`` on an imported checkpoint: the file (read in the project's style) is stripped."""
    from ilora_export.data.prompts import load_prompt_file
    from ilora_export.runtime.load import checkpoint_assets

    root, *_, out = official
    loaded = load_checkpoint(out)
    template = official_prompt_lines(root / "prompt.txt")[1]  # evaluate with the second line
    (root / "eval_prompt.txt").write_text("  " + template + " \n", encoding="utf-8")
    builder = checkpoint_assets(loaded).prompt_builder(load_prompt_file(root / "eval_prompt.txt"))
    tok, title = loaded.model.tokenizer, loaded.catalogue.title
    for r in _rows(toy_data_dir, 2):
        text = official_prompt_text(template, [title(i) for i in r.history], [title(c) for c in r.candidates])
        assert builder.encode(r.seq, r.len_seq, r.candidates).input_ids == tok(text)["input_ids"]


def test_imported_export_keeps_the_official_prompts_and_generation(official_export, toy_data_dir):
    """The manifest records the style; onnxruntime generation then bans EOS at the first step. The row's
    first pick is declared EOS so that the rule decides the answer: empty without it, not with it."""
    from dataclasses import replace

    from ilora_export.runtime.generator import Decoding, greedy_generate, prompt_inputs
    from ilora_export.runtime.ort_backend import OrtBackend

    export = official_export
    assert export.info.manifest["prompts_style"] == "official"
    assets = export.assets
    assert assets.templates.templates == tuple(p for p in official_prompt_lines(export.path / "prompts.txt") if p)
    assert all(t == t.strip() for t in assets.templates.templates) and assets.min_new_tokens == 1
    backend = OrtBackend(export)
    builder = assets.prompt_builder()
    batch = builder.collate([builder.encode(r.seq, r.len_seq, r.candidates) for r in _rows(toy_data_dir, 2)])
    inputs, _ = prompt_inputs(backend, batch, assets.token_ids)
    first = set(Decoding(backend).step(inputs).argmax(-1).tolist())  # the model's first picks
    official_rule = replace(assets, eos_ids=first)
    tokens = greedy_generate(backend, batch, official_rule.stop_rule(), assets.token_ids, 4).tokens
    assert all(row and row[0] not in first for row in tokens)
    without = replace(assets, eos_ids=first, min_new_tokens=0)
    assert greedy_generate(backend, batch, without.stop_rule(), assets.token_ids, 4).tokens == [[], []]


def test_plain_lora_needs_one_expert(official, tiny_llama_dir, toy_data_dir, tmp_path):
    root, config, _, sasrec, _ = official
    sd = official_state(config, router=False)
    ckpt = save_lightning(tmp_path / "lora.ckpt", sd)
    kw = dict(data_dir=toy_data_dir, log=lambda m: None)
    with pytest.raises(CheckpointError, match="plain LoRA") as err:
        import_official(ckpt, root / "rec.pt", str(tiny_llama_dir), tmp_path / "out", **kw)
    assert "--num-experts 1" in err.value.hint
    out = import_official(ckpt, root / "rec.pt", str(tiny_llama_dir), tmp_path / "out", num_experts=1, **kw)
    loaded = load_checkpoint(out)
    batch = _prompt(loaded, toy_data_dir)
    with torch.no_grad():
        ours = loaded.model(batch.input_ids, batch.attention_mask, batch.seq, batch.len_seq, batch.candidates).logits[
            :, -1
        ]
        ref = official_logits(
            tiny_llama_dir,
            out / "tokenizer",
            sd,
            sasrec,
            batch.input_ids,
            batch.seq,
            batch.len_seq,
            batch.candidates,
            k=1,
            router=False,
        )
    assert (ref - ours[:, :BASE_VOCAB]).abs().max() <= 1e-5  # plain LoRA: scaling alpha / r


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda c: official_state(c), {"num_experts": 3}, "has 4 experts, --num-experts says 3"),
        (lambda c: official_state(c, num_experts=3), {}, "rank 8 does not split into 3 experts"),
        (lambda c: official_state(c, width=96), {}, "width 96"),
    ],
)
def test_mismatches_are_refused(official, tiny_llama_dir, toy_data_dir, tmp_path, make, kwargs, message):
    root, config, *_ = official
    ckpt = save_lightning(tmp_path / "bad.ckpt", make(config))
    with pytest.raises(CheckpointError, match=message):
        import_official(
            ckpt,
            root / "rec.pt",
            str(tiny_llama_dir),
            tmp_path / "out",
            data_dir=toy_data_dir,
            log=lambda m: None,
            **kwargs,
        )
    assert not (tmp_path / "out").exists()


def test_rank_disagreeing_with_hyperparameters_is_refused(official, tiny_llama_dir, toy_data_dir, tmp_path):
    root, config, *_ = official
    sd = official_state(config, r=4, num_experts=2)
    torch.save({"state_dict": sd, "hyper_parameters": {"lora_r": 8}}, tmp_path / "r.ckpt")
    with pytest.raises(CheckpointError, match="lora_r=8, the weights have rank 4"):
        import_official(
            tmp_path / "r.ckpt",
            root / "rec.pt",
            str(tiny_llama_dir),
            tmp_path / "out",
            data_dir=toy_data_dir,
            log=lambda m: None,
        )


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo owned > /dev/null",))


def test_pickle_with_a_foreign_global_is_refused(official, tiny_llama_dir, toy_data_dir, tmp_path):
    root, config, *_ = official
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "callbacks": _Evil()}))
    with pytest.raises(UnsafePickleError, match="os.system|posix.system"):
        import_official(
            path, root / "rec.pt", str(tiny_llama_dir), tmp_path / "out", data_dir=toy_data_dir, log=lambda m: None
        )


def test_router_statistics_can_be_recalibrated(official, tiny_llama_dir, toy_data_dir, tmp_path):
    root, *_ = official
    messages = []
    out = import_official(
        root / "official.ckpt",
        root / "rec.pt",
        str(tiny_llama_dir),
        tmp_path / "recal",
        data_dir=toy_data_dir,
        recalibrate_router_data=toy_data_dir,
        log=messages.append,
    )
    gate = load_checkpoint(out).model.gate_net
    assert gate.bn1.running_var.ne(1).any() and gate.bn1.running_mean.ne(0).any()
    default = load_checkpoint(official[4]).model.gate_net
    assert torch.equal(default.bn1.running_mean, torch.zeros(16)) and torch.equal(
        default.bn1.running_var, torch.ones(16)
    )
    n = len(load_dataset(toy_data_dir).split("train"))
    assert any(f"from {n} training sequences" in m for m in messages)


def test_cli_imports_and_refuses_with_a_hint(official, tiny_llama_dir, toy_data_dir, tmp_path, capsys):
    from tests.factories import cli_exit_code

    root, config, *_ = official
    args = [
        "import-official",
        "--rec-model",
        str(root / "rec.pt"),
        "--base-model",
        str(tiny_llama_dir),
        "--data",
        str(toy_data_dir),
    ]
    assert cli_exit_code([*args, "--ckpt", str(root / "official.ckpt"), "-o", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "K 4, scaling 16" in out and "mean 0 / variance 1" in out and "--prompt-file" in out
    lora = save_lightning(tmp_path / "lora.ckpt", official_state(config, router=False))
    assert cli_exit_code([*args, "--ckpt", str(lora), "-o", str(tmp_path / "no")]) == 1
    err = capsys.readouterr().err
    assert "plain LoRA" in err and "Hint: import it as a single expert with --num-experts 1" in err
    assert "Traceback" not in err and not (tmp_path / "no").exists()
