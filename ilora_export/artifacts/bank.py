"""The MoE-LoRA expert bank's layout: its tensor names, shapes, orientation and scaling, defined once.

Per wrapped projection ``<proj>`` (``q_proj`` ... ``down_proj``) each decoder layer holds two factors,
``lora_A`` (the layer's weight [r, in]) and ``lora_B`` ([out, r]); expert k owns the contiguous rank
slice ``k*r/K : (k+1)*r/K`` and the adapter is scaled by ``alpha / (r / K)``.

Outside the model the bank is one tensor per projection and factor, stacked over the L layers and
stored transposed, so that one layer's slice is a plain MatMul operand (``x A^T``, ``h B^T``)::

    key              decoder graph input      stored shape    (one layer's slice)
    lora_A.<proj>    bank.lora_A.<proj>       [L, in, r]      A^T
    lora_B.<proj>    bank.lora_B.<proj>       [L, r, out]     B^T

Keys name the tensors of ``bank.safetensors`` and of ``ModelShape.bank_shapes``; graph inputs name the
decoder's inputs. Both are ordered by projection name, each projection's A before its B. Inside the
model a factor is the parameter ``<module>.<factor>.<adapter>.weight``.

Torch-free: shapes are lists of ints, and :func:`to_stored` / :func:`from_stored` work on numpy arrays
and torch tensors alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LORA_A = "lora_A"
LORA_B = "lora_B"
FACTORS = (LORA_A, LORA_B)  # the order of a projection's tensors
INPUT_PREFIX = "bank."
KEY_FORMS = " or ".join(f"{f}.<projection>" for f in FACTORS)  # for messages

LAYER_AXIS = 0  # of a stored tensor
STORED_NDIM = 3  # [L, rows, columns]
_RANK_AXIS = {LORA_A: -1, LORA_B: -2}  # in the stored orientation: of a whole tensor or of one layer's slice


# -- ranks and scaling ----------------------------------------------------------------------------


def expert_rank(r: int, num_experts: int) -> int:
    """Ranks per expert, r / K; ValueError unless K divides r."""
    if r % num_experts:
        raise ValueError(f"rank {r} is not divisible by {num_experts} experts")
    return r // num_experts


def lora_scaling(alpha: float, r: int, num_experts: int) -> float:
    """The adapter's scaling, alpha / (r / K)."""
    return alpha / (r / num_experts)


# -- names ----------------------------------------------------------------------------------------


def bank_key(factor: str, projection: str) -> str:
    """``lora_A.<projection>`` / ``lora_B.<projection>``: a stored tensor's name."""
    if factor not in FACTORS:
        raise ValueError(f"{factor!r} is not a bank factor ({', '.join(FACTORS)})")
    return f"{factor}.{projection}"


def parse_bank_key(key: str) -> tuple[str, str]:
    """(factor, projection) of a stored tensor's name; ValueError for any other name."""
    factor, _, projection = key.partition(".")
    if factor not in FACTORS or not projection:
        raise ValueError(f"{key!r} is not an expert-bank key (expected {KEY_FORMS})")
    return factor, projection


def is_bank_key(key: str) -> bool:
    try:
        parse_bank_key(key)
    except ValueError:
        return False
    return True


def bank_keys(projections: Iterable[str]) -> list[str]:
    """Every key of a bank over ``projections``, in the layout's order."""
    return [bank_key(f, p) for p in sorted(projections) for f in FACTORS]


def ordered_keys(keys: Iterable[str]) -> list[str]:
    """``keys`` in the layout's order: by projection, then A before B."""

    def order(key):
        factor, projection = parse_bank_key(key)
        return projection, FACTORS.index(factor)

    return sorted(keys, key=order)


def input_name(key: str) -> str:
    """The decoder graph input that takes the stored tensor ``key``."""
    parse_bank_key(key)
    return INPUT_PREFIX + key


def key_of_input(name: str) -> str | None:
    """The stored tensor a decoder graph input takes, or None when ``name`` is no bank input."""
    key = name.removeprefix(INPUT_PREFIX)
    return key if key != name and is_bank_key(key) else None


def is_bank_input(name: str) -> bool:
    return key_of_input(name) is not None


def factor_of_input(name: str) -> str | None:
    """The factor (``LORA_A`` / ``LORA_B``) a decoder graph input takes, None when it is no bank input."""
    key = key_of_input(name)
    return None if key is None else parse_bank_key(key)[0]


def parameter_name(module: str, factor: str, adapter: str) -> str:
    """The model parameter holding one layer's ``factor`` (``<module>.lora_A.<adapter>.weight``)."""
    if factor not in FACTORS:
        raise ValueError(f"{factor!r} is not a bank factor ({', '.join(FACTORS)})")
    return f"{module}.{factor}.{adapter}.weight"


# -- shapes and orientation -----------------------------------------------------------------------


def layer_shape(factor: str, in_features: int, out_features: int, r: int) -> list[int]:
    """One layer's factor as the model holds it: A [r, in], B [out, r]."""
    return {LORA_A: [r, in_features], LORA_B: [out_features, r]}[factor]


def stored_shape(factor: str, num_layers: int, in_features: int, out_features: int, r: int) -> list[int]:
    """A stored tensor: the layers' factors transposed and stacked, A [L, in, r], B [L, r, out]."""
    return [num_layers, *reversed(layer_shape(factor, in_features, out_features, r))]


def stored_rank(factor: str, shape) -> int:
    """The rank r read from a stored tensor's shape, or from one layer's slice of it."""
    return int(shape[_RANK_AXIS[factor]])


def rank_of(key: str, shape) -> int:
    """The rank r read from the stored shape of ``key``."""
    return stored_rank(parse_bank_key(key)[0], shape)


def to_stored(weight):
    """A layer's factor (or a stack of them) in the stored orientation: its last two axes swapped."""
    return weight.swapaxes(-1, -2)


def from_stored(stored):
    """A stored slice (or stack) back in the model's orientation, A [r, in], B [out, r]."""
    return stored.swapaxes(-1, -2)


# -- graph inputs and the bank file ---------------------------------------------------------------


def graph_input_shapes(shapes: Mapping[str, list[int]]) -> list[tuple[str, list[int]]]:
    """(graph input name, stored shape) of each key of ``shapes``, in the layout's order."""
    return [(input_name(k), list(shapes[k])) for k in ordered_keys(shapes)]


def as_graph_inputs(tensors: Mapping[str, object]) -> dict[str, object]:
    """Stored tensors by key -> the same tensors by decoder graph input name."""
    return {input_name(k): v for k, v in tensors.items()}


def file_metadata(num_experts: int, r: int, num_layers: int) -> dict[str, str]:
    """The metadata ``bank.safetensors`` carries, checked when a bank is read."""
    return {"num_experts": str(num_experts), "r": str(r), "num_layers": str(num_layers)}


@dataclass(frozen=True)
class BankShape:
    """The sizes a bank's layout follows from: L layers, each projection's (in, out) features, r and K."""

    num_layers: int
    features: Mapping[str, tuple[int, int]]  # projection -> (in_features, out_features)
    r: int
    num_experts: int

    @property
    def keys(self) -> list[str]:
        return bank_keys(self.features)

    @property
    def input_names(self) -> list[str]:
        return [input_name(k) for k in self.keys]

    @property
    def shapes(self) -> dict[str, list[int]]:
        """Stored shape by key, in the layout's order: ``lora_A.<proj>`` [L, in, r], ``lora_B.<proj>`` [L, r, out]."""
        out = {}
        for key in self.keys:
            factor, projection = parse_bank_key(key)
            out[key] = stored_shape(factor, self.num_layers, *self.features[projection], self.r)
        return out

    @property
    def expert_rank(self) -> int:
        return expert_rank(self.r, self.num_experts)

    def scaling(self, alpha: float) -> float:
        return lora_scaling(alpha, self.r, self.num_experts)
