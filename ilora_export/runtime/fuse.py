"""Fold a known expert bank into the decoder graph and fuse each adapter into its base projection.

With the bank known when the session is created, every MoE-LoRA projection of the exported graph::

    y = x W + s * ((x A_l) * g_r) B_l          # x [B, S, in], A_l [in, r], B_l [r, out], g_r [B, 1, r]

(A_l, B_l: layer l's slices of a projection's bank inputs, stored as ``artifacts.bank`` lays them out)

is rewritten per group of projections that read the same ``x`` (q/k/v; gate/up; o; down)::

    h  = (x [A_1 .. A_n]) * [g_r .. g_r]                     # [B, S, n r]: one MatMul, one Mul
    y_i = concat(x, h) [[W_i], [0 .. s B_i .. 0]]             # the base MatMul, n r rows longer

so the adapter costs one small MatMul, one Mul and one Concat per group instead of two MatMuls, two
Muls and an Add per projection (per token, that is most of its cost on a CPU). The stacked weights
``[[W_i], [s B_i]]`` are ``Concat`` nodes over initializers, folded by onnxruntime once at load. The
gate stays an input: the result is exact up to float summation order.

A projection that does not match the pattern exactly is left as it is (still correct, just unfused).

Further rewrites to onnxruntime's contrib kernels, each kept because an alternating benchmark showed a
win with identical answers (``benchmarks/README.md``): RMSNorm as ``SimplifiedLayerNormalization``
(:func:`fuse_rmsnorm`), the rotary embedding as ``RotaryEmbedding`` (:func:`fuse_rotary`) and each
layer's attention over the preallocated cache as ``GroupQueryAttention`` (:func:`fuse_attention`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ilora_export.artifacts.bank import LORA_A, factor_of_input, stored_rank


@dataclass
class _Adapter:
    x: str  # the projection's input
    gate: str  # g_r [B, 1, r]
    a: np.ndarray  # [in, r]: one layer's stored A
    b: np.ndarray  # [r, out]: one layer's stored B, scaling folded in
    base_weight: str  # initializer [in, out]
    output: str  # the Add's output (the projection's result)
    nodes: list  # the nodes this adapter replaces (base MatMul included)


def _constant_values(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {}
    for init in graph.initializer:
        if not init.external_data and init.name:  # small constants only; weights stay where they are
            values[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


class _Index:
    """Who produces and who reads each tensor of a graph, and its small constants (a snapshot)."""

    def __init__(self, graph):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.consts = _constant_values(graph)

    def only(self, name, op):
        """The single node reading ``name`` if it is an ``op``, else None."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def made_by(self, name, op):
        """The node producing ``name`` if it is an ``op``, else None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None


def _match(graph, bank: dict[str, np.ndarray]) -> list[_Adapter]:
    from onnx import TensorProto

    ix = _Index(graph)
    producer, consumers, consts, only = ix.producer, ix.consumers, ix.consts, ix.only
    float_inits = {i.name: i for i in graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}

    def bank_slice(name):  # Gather(<bank input>, layer) -> the numpy slice
        g = producer.get(name)
        if g is None or g.op_type != "Gather" or g.input[0] not in bank or g.input[1] not in consts:
            return None, None
        if any(a.name == "axis" and a.i != 0 for a in g.attribute) or consts[g.input[1]].ndim != 0:
            return None, None
        return g, bank[g.input[0]][int(consts[g.input[1]])]

    found = []
    for name in (n for n in bank if factor_of_input(n) == LORA_A):
        for gather_a in consumers.get(name, []):
            if gather_a.op_type != "Gather":
                continue
            mm_a = only(gather_a.output[0], "MatMul")
            if mm_a is None or mm_a.input[1] != gather_a.output[0]:
                continue
            _, a = bank_slice(gather_a.output[0])
            mul_g = only(mm_a.output[0], "Mul")
            mm_b = mul_g and only(mul_g.output[0], "MatMul")
            mul_s = mm_b and only(mm_b.output[0], "Mul")
            add = mul_s and only(mul_s.output[0], "Add")
            if a is None or add is None or mm_b.input[0] != mul_g.output[0]:
                continue
            gather_b, b = bank_slice(mm_b.input[1])
            gate = mul_g.input[1] if mul_g.input[0] == mm_a.output[0] else mul_g.input[0]
            scale = mul_s.input[1] if mul_s.input[0] == mm_b.output[0] else mul_s.input[0]
            base_out = add.input[0] if add.input[1] == mul_s.output[0] else add.input[1]
            base = producer.get(base_out)
            if (
                b is None
                or scale not in consts
                or consts[scale].size != 1
                or base is None
                or base.op_type != "MatMul"
                or base.input[0] != mm_a.input[0]
                or base.input[1] not in float_inits
                or len(consumers[base_out]) != 1
                or len(consumers[gather_b.output[0]]) != 1
                or len(float_inits[base.input[1]].dims) != 2
            ):
                continue
            found.append(
                _Adapter(
                    x=mm_a.input[0],
                    gate=gate,
                    a=a,
                    b=b * consts[scale].reshape(()),
                    base_weight=base.input[1],
                    output=add.output[0],
                    nodes=[gather_a, mm_a, mul_g, gather_b, mm_b, mul_s, add, base],
                )
            )
    return found


def fold_bank(model, bank: dict[str, np.ndarray], *, fuse: bool = True):
    """``model`` (an onnx ModelProto of the decoder) with ``bank`` folded in and, with ``fuse``, the
    adapters fused into their base projections; returns (model, number of projections fused).

    ``bank`` maps the decoder's bank input names (``artifacts.bank.input_name``) to their stored values;
    those inputs become initializers.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    adapters = _match(graph, bank) if fuse else []
    keep = [i for i in graph.input if i.name not in bank]
    del graph.input[:]
    graph.input.extend(keep)
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in bank.items())
    if not adapters:
        return model, 0
    dtypes = {i.name: helper.tensor_dtype_to_np_dtype(i.data_type) for i in graph.initializer}
    groups: dict[tuple[str, str], list[_Adapter]] = defaultdict(list)
    for ad in adapters:
        groups[(ad.x, ad.gate)].append(ad)
    removed = {id(n) for ad in adapters for n in ad.nodes}
    new_nodes, new_inits, tiled = [], [], {}
    for gi, ((x, gate), members) in enumerate(groups.items()):
        n, r = len(members), stored_rank(LORA_A, members[0].a.shape)
        dtype = dtypes[members[0].base_weight]
        name = f"ilora_fused_{gi}"
        new_inits.append(
            numpy_helper.from_array(np.concatenate([ad.a for ad in members], axis=1).astype(dtype), f"{name}.A")
        )  # [in, n r]
        if n not in tiled:
            tiled[n] = gate if n == 1 else f"ilora_gate_x{n}"
            if n > 1:
                new_nodes.append(helper.make_node("Concat", [gate] * n, [tiled[n]], axis=-1))  # [B, 1, n r]
        new_nodes += [
            helper.make_node("MatMul", [x, f"{name}.A"], [f"{name}.h"]),  # [B, S, n r]
            helper.make_node("Mul", [f"{name}.h", tiled[n]], [f"{name}.hg"]),
            helper.make_node("Concat", [x, f"{name}.hg"], [f"{name}.xh"], axis=-1),
        ]  # [B, S, in + n r]
        for i, ad in enumerate(members):
            rows = np.zeros((n * r, ad.b.shape[1]), dtype)  # [n r, out]: only this projection's slice
            rows[i * r : (i + 1) * r] = ad.b
            new_inits.append(numpy_helper.from_array(rows, f"{name}.B{i}"))
            new_nodes += [
                helper.make_node("Concat", [ad.base_weight, f"{name}.B{i}"], [f"{name}.W{i}"], axis=0),
                helper.make_node("MatMul", [f"{name}.xh", f"{name}.W{i}"], [ad.output]),
            ]
    graph.initializer.extend(new_inits)
    _replace_nodes(graph, removed, new_nodes)
    return model, len(adapters)


def _replace_nodes(graph, removed: set[int], new_nodes: list) -> None:
    """Drop the nodes whose id() is in ``removed``, add ``new_nodes``, restore topological order and
    forget the shape annotations of tensors no longer produced."""
    nodes = [nd for nd in graph.node if id(nd) not in removed] + new_nodes
    del graph.node[:]
    graph.node.extend(_topological(nodes, {i.name for i in graph.input} | {i.name for i in graph.initializer}))
    names = {o for nd in graph.node for o in nd.output}
    for v in [v for v in graph.value_info if v.name not in names]:
        graph.value_info.remove(v)


def _topological(nodes, available: set[str]) -> list:
    """Kahn's order, stable: each node after the producers of its inputs."""
    producer = {o: k for k, nd in enumerate(nodes) for o in nd.output}
    waiting = [sum(1 for i in set(nd.input) if i and i not in available and i in producer) for nd in nodes]
    users = defaultdict(list)
    for k, nd in enumerate(nodes):
        for i in set(nd.input):
            if i and i not in available and i in producer:
                users[producer[i]].append(k)
    import heapq

    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise RuntimeError("fusing the expert bank produced a cycle")  # a bug, not a user error
    return order


def fuse_rmsnorm(model):
    """RMSNorm as the exporter writes it, ``w * (x * 1 / sqrt(mean(x^2) + eps))`` (Pow, ReduceMean, Add,
    Sqrt, Reciprocal, Mul, Mul: the pattern onnxruntime's own fusion does not match), rewritten as one
    ``SimplifiedLayerNormalization`` node (fp32 only). Returns (model, number fused)."""
    from onnx import TensorProto, helper

    graph = model.graph
    ix = _Index(graph)
    consts, only = ix.consts, ix.only
    floats = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}

    replaced, new_nodes = set(), []
    for pow_ in (n for n in graph.node if n.op_type == "Pow"):
        x = pow_.input[0]
        if pow_.input[1] not in consts or float(consts[pow_.input[1]].reshape(-1)[0]) != 2.0:
            continue
        mean = only(pow_.output[0], "ReduceMean")
        add = mean and only(mean.output[0], "Add")
        sqrt = add and only(add.output[0], "Sqrt")
        recip = sqrt and only(sqrt.output[0], "Reciprocal")
        mul = recip and only(recip.output[0], "Mul")
        scale = mul and only(mul.output[0], "Mul")
        if scale is None or set(mul.input) != {x, recip.output[0]}:
            continue
        axes = consts.get(mean.input[1]) if len(mean.input) > 1 else None
        keep = next((a.i for a in mean.attribute if a.name == "keepdims"), 1)
        eps = next((i for i in add.input if i != mean.output[0]), None)
        weight = next((i for i in scale.input if i != mul.output[0]), None)
        if (
            axes is None
            or axes.reshape(-1).tolist() != [-1]
            or not keep
            or eps not in consts
            or consts[eps].size != 1
            or weight not in floats
        ):
            continue
        chain = [pow_, mean, add, sqrt, recip, mul, scale]
        replaced |= {id(n) for n in chain}
        new_nodes.append(
            helper.make_node(
                "SimplifiedLayerNormalization",
                [x, weight],
                [scale.output[0]],
                axis=-1,
                epsilon=float(consts[eps].reshape(-1)[0]),
                stash_type=1,
            )
        )
    if not new_nodes:
        return model, 0
    _replace_nodes(graph, replaced, new_nodes)
    return model, len(new_nodes)


def fuse_rotary(model):
    """The rotary embedding as the exporter writes it for q and k (x [B, N, S, d])::

        x * cos + concat(-x[..., d/2:], x[..., :d/2]) * sin      # Slice, Slice, Neg, Concat, Mul, Mul, Add
        cos, sin = Unsqueeze(Cos/Sin(concat(f, f)))            # f = float(positions)[..., None] * inv_freq

    rewritten as one ``com.microsoft.RotaryEmbedding`` node per q and per k, over cos/sin caches
    [C, d/2] computed once per call from the same ``inv_freq`` for the positions 0..C-1, C the KV
    capacity (positions never reach it). fp32 only; a site that differs in any way (another rotary
    variant, a scaling factor) is left as it is. Returns (model, number fused)."""
    from onnx import TensorProto, helper

    graph = model.graph
    ix = _Index(graph)
    producer, consumers, consts, only = ix.producer, ix.consumers, ix.consts, ix.only
    past = next((i for i in graph.input if i.name.startswith("past_key_values.")), None)
    if past is None or past.type.tensor_type.elem_type != TensorProto.FLOAT:
        return model, 0

    def angle_source(trig):  # trig(concat(f, f)) with f = Cast(Unsqueeze(positions, -1)) * inv_freq
        cat = producer.get(trig.input[0])
        if cat is None or cat.op_type != "Concat" or len(set(cat.input)) != 1 or len(cat.input) != 2:
            return None
        mul = producer.get(cat.input[0])
        if mul is None or mul.op_type != "Mul":
            return None
        freq = next((i for i in mul.input if i in consts and consts[i].ndim == 1), None)
        cast = next((producer.get(i) for i in mul.input if i != freq), None)
        unsq = cast is not None and cast.op_type == "Cast" and producer.get(cast.input[0])
        axes = unsq is not None and unsq.op_type == "Unsqueeze" and consts.get(unsq.input[1])
        if freq is None or axes is None or axes is False or axes.reshape(-1).tolist() not in ([-1], [2]):
            return None  # positions [B, S] -> [B, S, 1]
        return unsq.input[0], freq, cat.output[0]  # positions [B, S] int64, inv_freq [d/2], concat(f, f)

    tables = {}  # (positions, inv_freq) -> (cos Unsqueeze output, sin Unsqueeze output)
    for cos in (n for n in graph.node if n.op_type == "Cos"):
        src = angle_source(cos)
        sin = src and next((n for n in consumers[src[2]] if n.op_type == "Sin"), None)
        ucos, usin = only(cos.output[0], "Unsqueeze"), sin and only(sin.output[0], "Unsqueeze")
        if src and ucos and usin:
            tables[(src[0], src[1])] = (ucos.output[0], usin.output[0])
    if len(tables) != 1:
        return model, 0
    (positions, inv_freq), (ucos, usin) = next(iter(tables.items()))
    half = consts[inv_freq].shape[0]

    def is_half(slice_node, x, first: bool) -> bool:
        if slice_node is None or slice_node.op_type != "Slice" or slice_node.input[0] != x or len(slice_node.input) < 4:
            return False
        start, end, axes = (consts.get(i) for i in slice_node.input[1:4])
        steps = consts.get(slice_node.input[4]) if len(slice_node.input) > 4 else np.ones(1)
        if start is None or end is None or axes is None or steps is None or steps.reshape(-1).tolist() != [1]:
            return False
        if axes.reshape(-1).tolist() not in ([-1], [3]):
            return False
        want = (0, half) if first else (half, None)
        s, e = int(start.reshape(-1)[0]), int(end.reshape(-1)[0])
        return s == want[0] and (e == half if first else e >= 2 * half)

    replaced, new_nodes = set(), []
    for mul_sin in [n for n in consumers.get(usin, []) if n.op_type == "Mul"]:
        rot = next((i for i in mul_sin.input if i != usin), None)
        cat = producer.get(rot)
        add = only(mul_sin.output[0], "Add")
        if cat is None or cat.op_type != "Concat" or len(cat.input) != 2 or add is None:
            continue
        neg, first = producer.get(cat.input[0]), producer.get(cat.input[1])
        second = neg is not None and neg.op_type == "Neg" and producer.get(neg.input[0])
        if not second or first is None:
            continue
        x = first.input[0]
        mul_cos = producer.get(next((i for i in add.input if i != mul_sin.output[0]), ""))
        if (
            mul_cos is None
            or mul_cos.op_type != "Mul"
            or set(mul_cos.input) != {x, ucos}
            or not is_half(first, x, True)
            or not is_half(second, x, False)
            or any(len(consumers[n.output[0]]) != 1 for n in (first, second, neg, cat, mul_cos))
        ):
            continue
        replaced |= {id(n) for n in (first, second, neg, cat, mul_sin, mul_cos, add)}
        new_nodes.append(
            helper.make_node(
                "RotaryEmbedding",
                [x, positions, "ilora_rotary_cos", "ilora_rotary_sin"],
                [add.output[0]],
                domain="com.microsoft",
                interleaved=0,
            )
        )
    if not new_nodes:
        return model, 0
    # caches [C, d/2]: angle p * inv_freq for p = 0..C-1, C read from the first past tensor's shape
    graph.initializer.extend(
        [
            helper.make_tensor("ilora_rotary_axis2", TensorProto.INT64, [1], [2]),
            helper.make_tensor("ilora_rotary_zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("ilora_rotary_one", TensorProto.INT64, [], [1]),
            helper.make_tensor("ilora_rotary_col", TensorProto.INT64, [1], [1]),
        ]
    )
    new_nodes += [
        helper.make_node("Shape", [past.name], ["ilora_rotary_shape"]),
        helper.make_node("Gather", ["ilora_rotary_shape", "ilora_rotary_axis2"], ["ilora_rotary_c1"], axis=0),
        helper.make_node("Squeeze", ["ilora_rotary_c1"], ["ilora_rotary_c"]),
        helper.make_node("Range", ["ilora_rotary_zero", "ilora_rotary_c", "ilora_rotary_one"], ["ilora_rotary_p"]),
        helper.make_node("Cast", ["ilora_rotary_p"], ["ilora_rotary_pf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ilora_rotary_pf", "ilora_rotary_col"], ["ilora_rotary_pc"]),  # [C, 1]
        helper.make_node("Mul", ["ilora_rotary_pc", inv_freq], ["ilora_rotary_angle"]),  # [C, d/2]
        helper.make_node("Cos", ["ilora_rotary_angle"], ["ilora_rotary_cos"]),
        helper.make_node("Sin", ["ilora_rotary_angle"], ["ilora_rotary_sin"]),
    ]
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _replace_nodes(graph, replaced, new_nodes)
    _drop_unused(graph)  # the per-token cos/sin the fused sites read
    return model, sum(1 for n in new_nodes if n.op_type == "RotaryEmbedding")


def _drop_unused(graph) -> None:
    """Remove the nodes none of whose outputs is read (by a node or as a graph output), repeatedly."""
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


@dataclass
class _AttentionSite:
    """One layer's exported attention, as :func:`fuse_attention` found it."""

    q: str  # the q projection's output [B, S, heads d], before its rotary
    k: str  # the k projection's output [B, S, kv d], before its rotary
    v: str  # the v projection's output [B, S, kv d]
    past_k: str
    past_v: str
    scale: float  # of the scores
    out: object  # the Reshape node producing the attention output [B, S, heads d]
    scatter_k: object  # the ScatterND nodes writing the presents
    scatter_v: object


def fuse_attention(model):
    """Each layer's attention over the preallocated cache, as exported (rotary of q and k on [B, N, S, d],
    one ScatterND per cache tensor, QK^T, scale, mask, softmax, PV, back to [B, S, N d]), rewritten as
    one ``com.microsoft.GroupQueryAttention`` node that reads the projections' [B, S, N d] outputs,
    writes the new columns into the cache in place (past and present bound to one buffer) and attends
    under the same left-padding mask as an ``attention_bias`` [B, 1, S, T] built once per call from
    ``cache_position`` and ``row_start`` (T = cache_position[-1] + 1, the same for every row), its
    rotary done by two 3-D ``RotaryEmbedding`` nodes. Needs :func:`fuse_rotary` first (its tables and
    positions); fp32 only. A layer that differs in any way is left as it is. Returns (model, layers fused).
    """
    from onnx import TensorProto, helper

    graph = model.graph
    ix = _Index(graph)
    consumers, consts, single, made_by = ix.consumers, ix.consts, ix.only, ix.made_by
    inputs = {i.name: i for i in graph.input}
    rotary = [n for n in graph.node if n.op_type == "RotaryEmbedding" and n.domain == "com.microsoft"]
    if not rotary or {"cache_position", "row_start"} - set(inputs):
        return model, 0
    positions, cos, sin = rotary[0].input[1:4]

    def heads_input(x4):  # Transpose(0, 2, 1, 3)(Reshape(x3d)) -> x3d [B, S, heads d]
        tr = made_by(x4, "Transpose")
        perm = tr is not None and next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
        rs = perm == [0, 2, 1, 3] and made_by(tr.input[0], "Reshape")
        return rs.input[0] if rs else None

    def rotated(upd):  # Expand(RotaryEmbedding(x4)) or Expand(x4) -> (x3d, rotary node or None)
        ex = made_by(upd, "Expand")
        if ex is None:
            return None, None
        rot = made_by(ex.input[0], "RotaryEmbedding")
        return heads_input(rot.input[0] if rot else ex.input[0]), rot

    sites = []
    for past_k in (i for i in inputs if i.startswith("past_key_values.") and i.endswith(".key")):
        past_v = past_k[: -len("key")] + "value"
        present_k, present_v = (p.replace("past_key_values.", "present.", 1) for p in (past_k, past_v))
        sk, sv = made_by(present_k, "ScatterND"), made_by(present_v, "ScatterND")
        if sk is None or sv is None or sk.input[0] != past_k or sv.input[0] != past_v:
            continue
        (k3, rot_k), (v3, rot_v) = rotated(sk.input[2]), rotated(sv.input[2])
        tk = single(present_k, "Transpose")
        qk = tk and single(tk.output[0], "MatMul")
        if k3 is None or v3 is None or rot_k is None or rot_v is not None or qk is None or qk.input[1] != tk.output[0]:
            continue
        q_view = made_by(qk.input[0], "Reshape")
        rot_q = q_view and made_by(q_view.input[0], "RotaryEmbedding")
        q3 = rot_q and heads_input(rot_q.input[0])
        scale_mul = single(qk.output[0], "Mul")
        scale = scale_mul and next((consts[i] for i in scale_mul.input if i in consts and consts[i].size == 1), None)
        pv = single(present_v, "MatMul")
        # between the two MatMuls: the scale, reshapes, the mask's Add and one Softmax, nothing else
        node, path = scale_mul, []
        while node is not None and node is not pv and len(path) < 12:
            path.append(node.op_type)
            users = consumers.get(node.output[0], [])
            node = users[0] if len(users) == 1 else None
        out_rs = pv and single(pv.output[0], "Reshape")
        out_tr = out_rs and single(out_rs.output[0], "Transpose")
        out = out_tr and single(out_tr.output[0], "Reshape")
        if (
            q3 is None
            or scale is None
            or node is not pv
            or path.count("Softmax") != 1
            or path.count("Add") != 1
            or not set(path) <= {"Mul", "Reshape", "Add", "Softmax", "Cast", "Unsqueeze"}
            or out is None
            or rot_q.input[1:4] != rot_k.input[1:4]
        ):
            continue
        sites.append(_AttentionSite(q3, k3, v3, past_k, past_v, float(scale.reshape(())), out, sk, sv))
    past = inputs.get(sites[0].past_k) if sites else None
    if not sites or past.type.tensor_type.elem_type != TensorProto.FLOAT:
        return model, 0
    shape = [d.dim_value for d in past.type.tensor_type.shape.dim]  # [B, kv, C, d]
    kv_heads, head_dim = shape[1], shape[3]

    p = "ilora_gqa_"
    graph.initializer.extend(
        [
            helper.make_tensor(p + "last", TensorProto.INT64, [1], [-1]),
            helper.make_tensor(p + "one", TensorProto.INT64, [1], [1]),
            helper.make_tensor(p + "zero", TensorProto.INT64, [], [0]),
            helper.make_tensor(p + "step", TensorProto.INT64, [], [1]),
            helper.make_tensor(p + "axes_bs", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor(p + "axes_bc", TensorProto.INT64, [2], [0, 2]),
            helper.make_tensor(p + "axis_h", TensorProto.INT64, [1], [1]),
            helper.make_tensor(p + "open", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor(p + "blocked", TensorProto.FLOAT, [], [float(np.finfo(np.float32).min)]),
        ]
    )
    new_nodes = [
        # T = cache_position[-1] + 1: every row's columns 0..T-1 (left padding), the new ones last
        helper.make_node("Gather", ["cache_position", p + "last"], [p + "end1"], axis=0),  # [1]
        helper.make_node("Add", [p + "end1", p + "one"], [p + "total1"]),
        helper.make_node("Squeeze", [p + "total1"], [p + "total64"]),  # []
        helper.make_node("Cast", [p + "total64"], [p + "total"], to=TensorProto.INT32),
        helper.make_node("Shape", ["row_start"], [p + "rows"]),  # [1] = [B]
        helper.make_node("Expand", [p + "end1", p + "rows"], [p + "seqlens64"]),  # [B] = T - 1
        helper.make_node("Cast", [p + "seqlens64"], [p + "seqlens"], to=TensorProto.INT32),
        # bias [B, 1, S, T]: 0 where row_start[b] <= j <= cache_position[s], else the fp32 minimum
        helper.make_node("Range", [p + "zero", p + "total64", p + "step"], [p + "cols"]),  # [T]
        helper.make_node("Unsqueeze", ["row_start", p + "axes_bs"], [p + "start"]),  # [B, 1, 1]
        helper.make_node("Unsqueeze", ["cache_position", p + "axes_bc"], [p + "qcol"]),  # [1, S, 1]
        helper.make_node("GreaterOrEqual", [p + "cols", p + "start"], [p + "after_pad"]),  # [B, 1, T]
        helper.make_node("LessOrEqual", [p + "cols", p + "qcol"], [p + "causal"]),  # [1, S, T]
        helper.make_node("And", [p + "after_pad", p + "causal"], [p + "valid"]),  # [B, S, T]
        helper.make_node("Where", [p + "valid", p + "open", p + "blocked"], [p + "bias3"]),
        helper.make_node("Unsqueeze", [p + "bias3", p + "axis_h"], [p + "bias"]),  # [B, 1, S, T]
    ]
    removed = set()
    for i, site in enumerate(sites):
        q_heads = _heads_of(graph, site.q, head_dim)
        if not q_heads or _heads_of(graph, site.k, head_dim) != kv_heads:
            continue
        q, k = f"{p}{i}.q", f"{p}{i}.k"
        new_nodes += [
            helper.make_node(
                "RotaryEmbedding", [site.q, positions, cos, sin], [q], domain="com.microsoft", num_heads=q_heads
            ),
            helper.make_node(
                "RotaryEmbedding", [site.k, positions, cos, sin], [k], domain="com.microsoft", num_heads=kv_heads
            ),
            helper.make_node(
                "GroupQueryAttention",
                [q, k, site.v, site.past_k, site.past_v, p + "seqlens", p + "total", "", "", "", p + "bias"],
                [site.out.output[0], site.scatter_k.output[0], site.scatter_v.output[0]],
                domain="com.microsoft",
                num_heads=q_heads,
                kv_num_heads=kv_heads,
                scale=site.scale,
            ),
        ]
        removed |= {id(site.scatter_k), id(site.scatter_v), id(site.out)}
    fused = sum(1 for n in new_nodes if n.op_type == "GroupQueryAttention")
    if not fused:
        return model, 0
    _replace_nodes(graph, removed, new_nodes)
    _drop_unused(graph)
    return model, fused


def _heads_of(graph, name: str, head_dim: int) -> int | None:
    """Heads in tensor ``name`` [B, S, heads * head_dim], from the graph's recorded shapes (None if unknown)."""
    info = next((v for v in graph.value_info if v.name == name), None)
    dims = info.type.tensor_type.shape.dim if info is not None else []
    last = dims[-1].dim_value if len(dims) == 3 else 0
    return last // head_dim if last and last % head_dim == 0 else None
