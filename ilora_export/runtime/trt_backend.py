"""The TensorRT backend for the shared generator (needs TensorRT and a CUDA build of PyTorch).

Device buffers are PyTorch tensors on one CUDA stream. Loading checks each plan before use: its
metadata (the export's manifest hash; TensorRT version and GPU when built by ``ilora-export trt``),
then the engine's I/O tensors against the export's contract and its profiles against the limits in
``engines.json``. The encoder and the two decoder contexts (prefill, decode) share one block of
activation memory, since they run one after another on the stream. The expert bank is bound once per
context; the KV cache is preallocated (capacity fixed per generation) and ping-ponged as
:class:`ilora_export.trt.binding.BindingPlan` lays out. Every TensorRT call is checked
(:class:`ilora_export.trt.context.CheckedContext`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ilora_export.artifacts.engines import read_engines_index
from ilora_export.artifacts.manifest import MANIFEST
from ilora_export.fileio import sha256_file
from ilora_export.runtime.backend import Encoded
from ilora_export.trt.binding import BindingPlan
from ilora_export.trt.context import CheckedContext
from ilora_export.trt.engine import EngineError, device_facts, import_tensorrt, load_engine
from ilora_export.trt.profiles import Limits, engine_profiles


class TrtBackend:
    name = "trt"

    def __init__(self, engines_dir, export, *, device: str = "cuda"):
        import torch

        trt = import_tensorrt()
        facts = device_facts()
        self.torch, self.device = torch, device
        self.tdtypes = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
        engines_dir = Path(engines_dir)
        index = read_engines_index(engines_dir)
        info = export.info
        self.info = info
        self.dtype = np.dtype(info.dtype)
        self.embeddings = export.embeddings
        self.limits = Limits.from_record(index.get("limits"), str(engines_dir / "engines.json"))
        self.plan = BindingPlan(info, self.limits)
        profiles = engine_profiles(info, self.limits)
        contracts = {"encoder": info.encoder, "decoder": info.decoder}
        manifest_sha = sha256_file(info.path / MANIFEST)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engines = {
            name: load_engine(
                trt,
                runtime,
                engines_dir / f"{name}.plan",
                contracts[name],
                profiles[name],
                facts=facts,
                manifest_sha256=manifest_sha,
            )
            for name in ("encoder", "decoder")
        }
        self.stream = torch.cuda.Stream() if device == "cuda" else None
        handle = self.stream.cuda_stream if self.stream is not None else 0
        # one block of activation memory for all three contexts: they never run at the same time
        size = max(e.device_memory_size_v2 for e in engines.values())
        self.activations = torch.empty(max(size, 1), dtype=torch.uint8, device=device)

        def context(name: str, profile: int) -> CheckedContext:
            engine = engines[name]
            raw = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if raw is None:
                raise EngineError(f"{name}: TensorRT could not create an execution context", "check GPU memory")
            ctx = CheckedContext(engine, raw, name, list(profiles[name]))
            ctx.set_device_memory(self.activations.data_ptr(), size)
            ctx.select_profile(profile, handle)
            return ctx

        self.handle = handle
        self.encoder = context("encoder", 0)
        self.contexts = [context("decoder", 0), context("decoder", 1)]
        self.bank = {}
        if not info.bake_experts:
            from ilora_export.artifacts.bank import as_graph_inputs
            from ilora_export.artifacts.manifest import BANK, read_bank

            for name, v in as_graph_inputs(read_bank(info.path / BANK, info)).items():
                self.bank[name] = torch.from_numpy(np.ascontiguousarray(v)).to(device)
            for ctx in self.contexts:  # bound once
                for name, t in self.bank.items():
                    ctx.set_shape(name, tuple(t.shape))
                    ctx.bind(name, t.data_ptr())
        sizes = self.plan.buffers()
        cache_dtype = self.tdtypes[info.dtype]
        self.kv = {  # zeroed: columns a call has not written yet are masked, but must be finite
            n: [torch.zeros(sizes[f"{n}#{i}"], dtype=cache_dtype, device=device) for i in (0, 1)]
            for n in self.plan.past_names
        }
        logits = info.decoder.outputs[0]
        self.logits = torch.empty(sizes["logits"], dtype=self.tdtypes[logits.dtype], device=device)

    def _to_device(self, array, dtype):
        return self.torch.from_numpy(np.ascontiguousarray(array, dtype)).to(self.device)

    def _sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def _run_encoder(self, seq, len_seq, items):
        inputs = {"seq": seq, "len_seq": len_seq, "items": items}
        dev = {k: self._to_device(v, np.int64) for k, v in inputs.items()}
        b, n = items.shape
        sizes = {"batch": b, "items": n}
        outs = {
            t.name: self.torch.empty(
                [sizes[a] if isinstance(a, str) else a for a in t.axes], dtype=self.tdtypes[t.dtype], device=self.device
            )
            for t in self.info.encoder.outputs
        }
        for name, t in dev.items():
            self.encoder.set_shape(name, tuple(t.shape))
            self.encoder.bind(name, t.data_ptr())
        for name, t in outs.items():
            self.encoder.bind(name, t.data_ptr())
        self.encoder.execute(self.handle)
        self._sync()
        return [outs[k].cpu().numpy() for k in ("gate_weights", "item_embeds", "item_scores")]

    def encode(self, seq, len_seq, items) -> Encoded:
        return Encoded(*self._run_encoder(seq, len_seq, items))

    def embed(self, token_ids) -> np.ndarray:
        return self.embeddings[token_ids]

    def step(self, embeds, cache_position, row_start, gate_weights, state):
        b, s = embeds.shape[:2]
        index, capacity = state if state is not None else (0, self.plan.capacity(s))
        bind = self.plan.step(index, b, s, capacity, int(cache_position[-1]) + 1)
        ctx = self.contexts[bind.profile]
        dev = {
            "inputs_embeds": self._to_device(embeds, self.dtype),
            "cache_position": self._to_device(cache_position, np.int64),
            "row_start": self._to_device(row_start, np.int64),
            "gate_weights": self._to_device(gate_weights, self.dtype),
        }
        for name, t in dev.items():
            ctx.set_shape(name, bind.input_shapes[name])
            ctx.bind(name, t.data_ptr())
        for past_name, present_name in zip(self.plan.past_names, self.plan.present_names):
            read, write = self.kv[past_name][bind.read], self.kv[past_name][bind.write]
            ctx.set_shape(past_name, bind.cache_shape)
            ctx.bind(past_name, read.data_ptr())
            ctx.bind(present_name, write.data_ptr())
        ctx.bind("logits", self.logits.data_ptr())
        ctx.execute(self.handle)
        self._sync()
        logits = self.logits[: b * self.plan.vocab].view(b, self.plan.vocab).float().cpu().numpy()
        return logits, (index + 1, capacity)
