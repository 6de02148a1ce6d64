"""The TensorRT backend for the shared generator (needs TensorRT and a CUDA build of PyTorch).

Device buffers are PyTorch CUDA tensors; one CUDA stream; the bank bound once per context; the KV
cache preallocated (capacity fixed per generation) and ping-ponged as
:class:`ilora_export.trt.binding.BindingPlan` lays out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ilora_export.artifacts.engines import read_engines_index
from ilora_export.runtime.backend import Encoded
from ilora_export.trt.binding import BindingPlan
from ilora_export.trt.engine import (
    EngineError,
    check_metadata,
    device_facts,
    import_tensorrt,
    read_metadata,
)
from ilora_export.trt.profiles import Limits


class TrtBackend:
    name = "trt"

    def __init__(self, engines_dir, export):
        import torch

        trt = import_tensorrt()
        facts = device_facts()
        self.torch = torch
        engines_dir = Path(engines_dir)
        index = read_engines_index(engines_dir)
        info = export.info
        self.dtype = np.dtype(info.dtype)
        self.embeddings = export.embeddings
        self.limits = Limits(**index["limits"])
        self.plan = BindingPlan(info, self.limits)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engines = {}
        for name in ("encoder", "decoder"):
            plan = engines_dir / f"{name}.plan"
            check_metadata(read_metadata(plan), trt_version=trt.__version__, plan=plan, **facts)
            engines[name] = runtime.deserialize_cuda_engine(plan.read_bytes())
            if engines[name] is None:
                raise EngineError(f"{plan}: TensorRT could not deserialize the engine", "rebuild it here")
        self.stream = torch.cuda.Stream()
        self.encoder = engines["encoder"].create_execution_context()
        self.contexts = []
        for profile in (0, 1):
            ctx = engines["decoder"].create_execution_context()
            ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self.contexts.append(ctx)
        tdtype = {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16}[self.dtype]
        self.tdtype = tdtype
        self.bank = {}
        if not info.bake_experts:
            from ilora_export.artifacts.bank import as_graph_inputs
            from ilora_export.artifacts.manifest import BANK, read_bank

            for name, v in as_graph_inputs(read_bank(info.path / BANK, info)).items():
                self.bank[name] = torch.from_numpy(np.ascontiguousarray(v)).cuda()
            for ctx in self.contexts:  # bound once
                for name, t in self.bank.items():
                    ctx.set_input_shape(name, tuple(t.shape))
                    ctx.set_tensor_address(name, t.data_ptr())
        sizes = self.plan.buffers()
        self.kv = {  # zeroed: columns a call has not written yet are masked, but must be finite
            n: [torch.zeros(sizes[f"{n}#{i}"], dtype=tdtype, device="cuda") for i in (0, 1)]
            for n in self.plan.past_names
        }
        self.logits = torch.empty(sizes["logits"], dtype=torch.float32, device="cuda")

    def _run_encoder(self, seq, len_seq, items):
        torch = self.torch
        inputs = {"seq": seq, "len_seq": len_seq, "items": items}
        dev = {k: torch.from_numpy(np.ascontiguousarray(v, np.int64)).cuda() for k, v in inputs.items()}
        b, n = items.shape
        outs = {
            "gate_weights": torch.empty(b, self.plan.num_experts, device="cuda"),
            "item_embeds": torch.empty(b, n, self.plan.hidden, device="cuda"),
            "item_scores": torch.empty(b, n, device="cuda"),
        }
        for name, t in dev.items():
            self.encoder.set_input_shape(name, tuple(t.shape))
            self.encoder.set_tensor_address(name, t.data_ptr())
        for name, t in outs.items():
            self.encoder.set_tensor_address(name, t.data_ptr())
        self.encoder.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return [outs[k].cpu().numpy() for k in ("gate_weights", "item_embeds", "item_scores")]

    def encode(self, seq, len_seq, items) -> Encoded:
        return Encoded(*self._run_encoder(seq, len_seq, items))

    def embed(self, token_ids) -> np.ndarray:
        return self.embeddings[token_ids]

    def step(self, embeds, cache_position, row_start, gate_weights, state):
        torch = self.torch
        b, s = embeds.shape[:2]
        index, capacity = state if state is not None else (0, self.plan.capacity(s))
        bind = self.plan.step(index, b, s, capacity, int(cache_position[-1]) + 1)
        ctx = self.contexts[bind.profile]
        dev = {
            "inputs_embeds": torch.from_numpy(np.ascontiguousarray(embeds, self.dtype)).cuda(),
            "cache_position": torch.from_numpy(np.ascontiguousarray(cache_position, np.int64)).cuda(),
            "row_start": torch.from_numpy(np.ascontiguousarray(row_start, np.int64)).cuda(),
            "gate_weights": torch.from_numpy(np.ascontiguousarray(gate_weights, self.dtype)).cuda(),
        }
        for name, t in dev.items():
            ctx.set_input_shape(name, bind.input_shapes[name])
            ctx.set_tensor_address(name, t.data_ptr())
        for past_name, present_name in zip(self.plan.past_names, self.plan.present_names):
            read, write = self.kv[past_name][bind.read], self.kv[past_name][bind.write]
            ctx.set_input_shape(past_name, bind.cache_shape)
            ctx.set_tensor_address(past_name, read.data_ptr())
            ctx.set_tensor_address(present_name, write.data_ptr())
        ctx.set_tensor_address("logits", self.logits.data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise EngineError("TensorRT execution failed (see its log above)", "check the engine limits")
        self.stream.synchronize()
        logits = self.logits[: b * self.plan.vocab].view(b, self.plan.vocab).cpu().numpy()
        return logits, (index + 1, capacity)
