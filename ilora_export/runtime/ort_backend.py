"""The onnxruntime backend over an export directory.

By default the expert bank is folded into the decoder session when it is created and each group of
adapters fused into its base projections (``bank_mode``, below); with ``bank_mode="input"`` it is
turned into OrtValues once and bound to every decoder call instead. The KV cache is one preallocated
OrtValue per layer and key/value, bound as both the past input and the present output of every call
(IO binding), so each call writes only its new columns, in place; it grows by ``KV_GROWTH`` columns
(one copy) when a call needs more. CPU EP by default,
CUDA EP with ``device="cuda"`` when the installed onnxruntime has it (outputs then stay on the GPU and
only the logits come back to the host).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ilora_export.artifacts.bank import as_graph_inputs
from ilora_export.artifacts.manifest import BANK, read_bank
from ilora_export.errors import ExportError, IloraError
from ilora_export.lazy import ONNX_EXTRA, require
from ilora_export.runtime.backend import Encoded, grown_capacity


def import_onnxruntime():
    return require(
        "onnxruntime", purpose="running an export", install=f"{ONNX_EXTRA} (or onnxruntime-gpu for the CUDA provider)"
    )


def session_options(threads: int | None = None):
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def providers_for(device: str) -> list[str]:
    ort = import_onnxruntime()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise IloraError(
            f"--device {device}: this onnxruntime has no CUDA provider "
            f"(available: {', '.join(ort.get_available_providers())})",
            "pip install onnxruntime-gpu (instead of onnxruntime), or use --device cpu",
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def check_active_providers(session, device: str) -> list[str]:
    """The providers ``session`` runs on; IloraError when ``device`` asked for CUDA and the session lacks
    the CUDA provider (onnxruntime-gpu whose CUDA or cuDNN libraries failed to load falls back to the CPU
    provider without raising)."""
    active = session.get_providers()
    if device != "cpu" and "CUDAExecutionProvider" not in active:
        ort = import_onnxruntime()
        raise IloraError(
            f"--device {device}: onnxruntime {ort.__version__} started the session without its CUDA provider "
            f"(active: {', '.join(active)})",
            "the CUDA or cuDNN libraries onnxruntime-gpu needs failed to load; onnxruntime-gpu >= 1.21 names "
            'the missing ones with: python -c "import onnxruntime as o; o.preload_dlls(); o.print_debug_info()" '
            "(install the CUDA and cuDNN versions it was built for), or use --device cpu",
        )
    return active


def _prepared_graph(file: Path, constants: dict[str, np.ndarray] | None, fuse: bool, *, cpu: bool = True) -> bytes:
    """The graph at ``file`` (weights stay external) with the named inputs turned into initializers and,
    with ``fuse``, the adapters fused into their base projections and RMSNorm into one node; on the CPU
    provider also the rotary embedding and each layer's attention into onnxruntime's contrib kernels
    (``runtime.fuse``; measured on CPU only, and the CUDA GroupQueryAttention kernel takes fp16/bf16)."""
    import onnx

    from ilora_export.runtime.fuse import fold_bank, fuse_attention, fuse_rmsnorm, fuse_rotary

    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as err:  # noqa: BLE001 (protobuf raises its own DecodeError; any failure is a bad file)
        raise ExportError(
            f"{file}: onnxruntime cannot load the graph ({type(err).__name__}: {err})"[:300],
            "the graph is missing or corrupt; export again",
        ) from None
    if constants:
        model, _ = fold_bank(model, constants, fuse=fuse)
    if fuse:
        model, _ = fuse_rmsnorm(model)
        if cpu:
            model, _ = fuse_rotary(model)
            model, _ = fuse_attention(model)
    return model.SerializeToString()


def open_session(
    file: Path,
    contract,
    *,
    threads: int | None = None,
    device: str = "cpu",
    constants: dict[str, np.ndarray] | None = None,
    fuse: bool = False,
):
    """An InferenceSession whose inputs/outputs are checked against ``contract``.

    ``constants`` turns those graph inputs into initializers of this session (folded and prepacked by
    onnxruntime at load); ``fuse`` applies the load-time fusions of ``runtime.fuse``; the graph file is
    unchanged.
    """
    ort = import_onnxruntime()
    options = session_options(threads)
    source: str | bytes = str(file)
    if constants or fuse:
        source = _prepared_graph(file, constants, fuse, cpu=device == "cpu")
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(file.parent))
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers_for(device))
    except (
        ort.capi.onnxruntime_pybind11_state.Fail,
        ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
        ort.capi.onnxruntime_pybind11_state.NoSuchFile,
        ort.capi.onnxruntime_pybind11_state.InvalidGraph,
        RuntimeError,
    ) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise ExportError(
            f"{file}: onnxruntime cannot load the graph ({first})",
            "the graph or its external-data file is missing or corrupt; export again",
        ) from None
    check_active_providers(session, device)
    if constants:
        contract = replace(contract, inputs=tuple(t for t in contract.inputs if t.name not in constants))
    contract.check_session(session)
    return session


class OrtBackend:
    """Encoder and decoder sessions of a loaded export; ``bank`` swaps in another expert bank file.

    ``bank_mode``: "fused" (default) folds the bank into the decoder session when it is created and
    fuses each group of adapters into its base projections (``runtime.fuse``: one small MatMul, Mul and
    Concat per group instead of two MatMuls, two Muls and an Add per projection), while the bank still
    comes from ``bank.safetensors`` (or ``bank``); "folded" folds it without any load-time fusion
    (onnxruntime then constant-folds the per-layer slices, as for a baked graph); "input" binds it as
    OrtValues on every call (the graph's own interface, one session for any number of banks). Every
    mode but "folded" also fuses RMSNorm into one node.
    """

    BANK_MODES = ("fused", "folded", "input")

    name = "ort"

    def __init__(self, export, *, device: str = "cpu", threads: int | None = None, bank=None, bank_mode: str = "fused"):
        ort = import_onnxruntime()
        info = export.info
        self.info = info
        self.dtype = np.dtype(info.dtype)
        self.embeddings = export.embeddings  # [V, H]
        self.device = device
        self.ort_device = "cuda" if device == "cuda" else "cpu"
        if bank_mode not in self.BANK_MODES:
            raise ValueError(f"bank_mode must be one of {self.BANK_MODES}, not {bank_mode!r}")
        tensors: dict[str, np.ndarray] = {}
        if not info.bake_experts:
            tensors = as_graph_inputs(read_bank(Path(bank) if bank else info.path / BANK, info))
        elif bank is not None:
            raise ExportError(
                f"{info.path}: the expert bank is baked into this export; --bank does not apply",
                "export without --bake-experts to swap expert banks",
            )
        self.encoder = open_session(info.path / info.encoder.file, info.encoder, threads=threads, device=device)
        self.decoder = open_session(
            info.path / info.decoder.file,
            info.decoder,
            threads=threads,
            device=device,
            constants=tensors if bank_mode != "input" else None,
            fuse=bank_mode != "folded",
        )
        self.providers = self.decoder.get_providers()  # what the decoder actually runs on
        self.contract = info.decoder
        self.past_inputs = [t.name for t in self.contract.inputs if t.name.startswith("past_key_values.")]
        self.present_outputs = [n.replace("past_key_values.", "present.", 1) for n in self.past_inputs]
        self.kv_shape = self.contract.input(self.past_inputs[0]).axes  # (batch, kv_heads, capacity, head_dim)
        self.bank: dict[str, object] = {}
        if bank_mode == "input":
            self.bank = {
                name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), self.ort_device)
                for name, v in tensors.items()
            }

    def encode(self, seq, len_seq, items) -> Encoded:
        gate, embeds, scores = self.encoder.run(
            None, {"seq": seq.astype(np.int64), "len_seq": len_seq.astype(np.int64), "items": items.astype(np.int64)}
        )
        return Encoded(gate, embeds, scores)

    def embed(self, token_ids) -> np.ndarray:
        return self.embeddings[token_ids]  # [B, S, H]

    def _cache(self, state, rows: int, needed: int) -> list:
        """The KV OrtValues [B, kv, C, d] holding ``needed`` columns: zeros at the prefill, the same values
        while they have room, else copied into a larger capacity (unwritten columns stay zero: finite)."""
        ort = import_onnxruntime()
        _, heads, _, head_dim = self.kv_shape
        capacity = 0 if state is None else state[0].shape()[2]
        grown = grown_capacity(capacity, needed)
        if grown == capacity:
            return state
        new = []
        for i in range(len(self.past_inputs)):
            buffer = np.zeros((rows, heads, grown, head_dim), self.dtype)  # [B, kv, C, d]
            if state is not None:
                buffer[:, :, :capacity] = state[i].numpy()
            new.append(ort.OrtValue.ortvalue_from_numpy(buffer, self.ort_device))
        return new

    def step(self, embeds, cache_position, row_start, gate_weights, state):
        state = self._cache(state, embeds.shape[0], int(cache_position[-1]) + 1)
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, self.dtype))
        binding.bind_cpu_input("cache_position", np.ascontiguousarray(cache_position, np.int64))
        binding.bind_cpu_input("row_start", np.ascontiguousarray(row_start, np.int64))
        binding.bind_cpu_input("gate_weights", np.ascontiguousarray(gate_weights, self.dtype))
        binding.bind_output("logits", "cpu")  # first: get_outputs() follows the binding order
        for past, present, value in zip(self.past_inputs, self.present_outputs, state):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same buffer: the new columns are written in place
        for name, value in self.bank.items():
            binding.bind_ortvalue_input(name, value)
        self.decoder.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[:, -1, :], state  # [B, V] fp32, the cache OrtValues
