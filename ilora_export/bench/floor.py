"""The hardware floor: measured memory bandwidth and GEMM rate of this machine, and what they allow.

Decode at batch 1 must read every weight once per token (plus the KV cache), so
``bytes per token / bandwidth`` bounds its latency from below; prefill must do ``2 x parameters x
tokens`` FLOPs (plus attention), so ``FLOPs / peak GEMM rate`` bounds it.
"""

from __future__ import annotations

import time


def measure_bandwidth_gbs(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Best read bandwidth (GB/s) over a buffer far larger than the caches: the faster of a PyTorch
    reduction and an onnxruntime matrix-vector product (the decode access pattern)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 1024 * 1024 // 4, dtype=torch.float32)
    runs = [(lambda: x.sum(), x.numel() * 4)]
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        k = 8192
        n = mib * 1024 * 1024 // 4 // k
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["v", "w"], ["y"])],
            "gemv",
            [
                helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, k]),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [k, n]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(
            helper.make_model(graph).SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        feed = {"v": torch.randn(1, k).numpy(), "w": x.view(k, n).numpy()}
        runs.append((lambda: sess.run(None, feed), k * n * 4))
    except ImportError:
        pass
    best = 0.0
    for run, nbytes in runs:
        run()
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            best = max(best, nbytes / (time.perf_counter() - t) / 1e9)
    return best


def measure_gemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matrix-multiply rate (GFLOP/s) at n x n, the faster of PyTorch's and onnxruntime's."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    runs = [lambda: a @ b]
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "gemm",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(
            helper.make_model(graph).SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        feed = {"a": a.numpy(), "b": b.numpy()}
        runs.append(lambda: sess.run(None, feed))
    except ImportError:
        pass
    best = float("inf")
    for run in runs:
        run()
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def decoder_floor(
    shape: dict,
    weight_bytes: int,
    past: int,
    bandwidth_gbs: float,
    gemm_gflops: float,
    prompt_lengths: list[int],
    bytes_per_value: int = 4,
) -> dict:
    """Lower bounds (ms) for decode at batch 1 with ``past`` cached tokens and for each prefill length."""
    layers, kv, d = shape["num_layers"], shape["num_kv_heads"], shape["head_dim"]
    kv_bytes = 2 * layers * kv * past * d * bytes_per_value
    decode_bytes = weight_bytes + kv_bytes
    params = weight_bytes / bytes_per_value
    embed = shape["vocab_size"] * shape["hidden_size"]
    out = {
        "decode_bytes_per_token": decode_bytes,
        "decode_ms_floor": decode_bytes / (bandwidth_gbs * 1e9) * 1e3,
        "prefill_ms_floor": {},
    }
    for n in prompt_lengths:
        # every non-embedding weight multiplies every token; the LM head only the last one; attention ~4 L n^2 H
        flops = 2 * (params - embed) * n + 2 * embed + 4 * layers * n * n * shape["hidden_size"]
        out["prefill_ms_floor"][str(n)] = flops / (gemm_gflops * 1e9) * 1e3
    return out
