"""Optimization profiles derived from an export's manifest and the user's limits (TensorRT-free).

The decoder gets two profiles over its preallocated KV cache: prefill (the prompt at once) and
decode (one token); in both the cache's capacity reaches prompt + new tokens. Fixed axes (hidden
size, heads, the expert bank) are pinned to the contract's sizes; named axes are resolved from the
limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from ilora_export.errors import IloraError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Limits:
    max_batch: int = 8
    max_prompt: int = 512
    max_new_tokens: int = 64
    num_candidates: int = 20

    def check(self) -> None:
        bad = [f"{k}={v}" for k, v in self.__dict__.items() if v < 1]
        if bad:
            raise IloraError(f"engine limits must be positive ({', '.join(bad)})", "pass values >= 1")

    @classmethod
    def from_record(cls, record, source: str) -> Limits:
        """The limits an engines folder recorded (``engines.json``), checked: it is read from a file."""
        names = set(cls.__dataclass_fields__)
        if (
            not isinstance(record, dict)
            or set(record) != names
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in record.values())
        ):
            raise IloraError(
                f"{source}: engine limits unreadable (expected integers {sorted(names)})",
                "build the engines again: ilora-export trt EXPORT_DIR",
            )
        limits = cls(**record)
        limits.check()
        return limits

    @property
    def opt_batch(self) -> int:
        return max(1, self.max_batch // 2)


def _resolve(axes, sizes: dict[str, int]) -> Shape:
    return tuple(a if isinstance(a, int) else sizes[a] for a in axes)


def _profile(contract, lo: dict, opt: dict, hi: dict) -> dict[str, tuple[Shape, Shape, Shape]]:
    return {t.name: (_resolve(t.axes, lo), _resolve(t.axes, opt), _resolve(t.axes, hi)) for t in contract.inputs}


def decoder_profiles(info, limits: Limits) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """{"prefill": {input: (min, opt, max)}, "decode": {...}} for the export's decoder."""
    limits.check()
    b, p, n = limits.max_batch, limits.max_prompt, limits.max_new_tokens
    ob, op = limits.opt_batch, max(1, p // 2)
    contract = info.decoder
    prefill = _profile(
        contract,
        {"batch": 1, "sequence": 1, "capacity": 1},
        {"batch": ob, "sequence": op, "capacity": op + n},
        {"batch": b, "sequence": p, "capacity": p + n},
    )
    decode = _profile(
        contract,
        {"batch": 1, "sequence": 1, "capacity": 2},
        {"batch": ob, "sequence": 1, "capacity": op + n},
        {"batch": b, "sequence": 1, "capacity": p + n},
    )
    return {"prefill": prefill, "decode": decode}


def encoder_profiles(info, limits: Limits) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """One profile: the history is the state size, items are history + candidates."""
    limits.check()
    history = info.manifest["model"]["state_size"]
    items = history + limits.num_candidates
    lo = {"batch": 1, "history": history, "items": 1}
    opt = {"batch": limits.opt_batch, "history": history, "items": items}
    hi = {"batch": limits.max_batch, "history": history, "items": items}
    return {"encoder": _profile(info.encoder, lo, opt, hi)}


def engine_profiles(info, limits: Limits) -> dict[str, dict]:
    """{"encoder": {"encoder": ...}, "decoder": {"prefill": ..., "decode": ...}}: profile order is index order."""
    return {"encoder": encoder_profiles(info, limits), "decoder": decoder_profiles(info, limits)}


def shape_arg(shape: Shape) -> str:
    """trtexec's dims syntax: 1x8x0x64."""
    return "x".join(str(d) for d in shape)
