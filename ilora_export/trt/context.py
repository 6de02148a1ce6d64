"""TensorRT execution contexts whose every call is checked (TensorRT-free: it works on the objects given).

TensorRT reports most failures by return value: ``set_input_shape`` outside the selected profile,
``set_tensor_address`` on a name the engine lacks, ``execute_async_v3`` with a tensor unbound, all
return False and leave the outputs unwritten. Each such return raises :class:`EngineError` here,
naming the tensor, the profile and its limits.
"""

from __future__ import annotations

from ilora_export.trt.engine import EngineError

_LIMITS_HINT = (
    "the engines' limits are in engines.json; rebuild with larger --max-batch / --max-prompt / "
    "--max-new-tokens / --num-candidates: ilora-export trt EXPORT"
)


class CheckedContext:
    """One ``IExecutionContext`` of ``engine`` (named ``label`` in messages) on one optimization profile."""

    def __init__(self, engine, context, label: str, profile_names: list[str]):
        self.engine, self.context, self.label = engine, context, label
        self.profile_names = profile_names
        self.profile = 0  # a new context starts on profile 0

    def _where(self) -> str:
        return f"{self.label}, profile {self.profile} ({self.profile_names[self.profile]})"

    def select_profile(self, profile: int, stream: int) -> None:
        """Select ``profile`` before any shape is set (selecting one forgets the shapes set before)."""
        if not self.context.set_optimization_profile_async(profile, stream):
            raise EngineError(
                f"{self.label}: TensorRT refused optimization profile {profile} "
                f"(the engine has {self.engine.num_optimization_profiles})",
                "rebuild the engines: ilora-export trt EXPORT",
            )
        self.profile = profile

    def set_device_memory(self, address: int, size: int) -> None:
        self.context.set_device_memory(address, size)

    def set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        fixed = tuple(self.engine.get_tensor_shape(name))
        if -1 not in fixed and len(fixed) == len(shape):  # a fixed input (the expert bank): nothing to set
            if fixed != tuple(shape):
                raise EngineError(f"{self._where()}: {name} is fixed at {list(fixed)}, not {list(shape)}", _LIMITS_HINT)
            return
        if not self.context.set_input_shape(name, tuple(shape)):
            try:
                lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
                limit = f"min {list(lo)}, max {list(hi)}"
            except Exception:  # noqa: BLE001 (not an input of this engine: say so instead)
                limit = "not an input of this engine"
            raise EngineError(f"{self._where()}: {name} of shape {list(shape)} is refused ({limit})", _LIMITS_HINT)

    def bind(self, name: str, address: int) -> None:
        if not self.context.set_tensor_address(name, address):
            raise EngineError(
                f"{self._where()}: TensorRT refused the address of {name} (not a tensor of this engine?)",
                "rebuild the engines from this export: ilora-export trt EXPORT",
            )

    def execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise EngineError(
                f"{self._where()}: TensorRT execution failed (a tensor unbound or a shape unset; see its log above)",
                _LIMITS_HINT,
            )
