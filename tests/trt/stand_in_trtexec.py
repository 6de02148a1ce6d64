"""A stand-in ``trtexec``: checks its command line against trtexec's rules (tests/trt/trtexec_args.py) and
builds a stand-in plan (tests/trt/fake_tensorrt.py) with the profiles and flags that line asks for.
Proves the emitted script's arguments and file layout, not that TensorRT builds the graphs."""

from __future__ import annotations

import sys

from tests.trt import fake_tensorrt as trt
from tests.trt.trtexec_args import parse_build_args


def main(argv: list[str]) -> None:
    parsed = parse_build_args(argv)
    opts = parsed["options"]
    logger = trt.Logger()
    builder = trt.Builder(logger)
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if "--stronglyTyped" in opts else 0
    network = builder.create_network(strongly)
    if not trt.OnnxParser(network, logger).parse_from_file(opts["--onnx"]):
        sys.exit("could not parse the ONNX file")
    config = builder.create_builder_config()
    if "--noTF32" in opts:
        config.clear_flag(trt.BuilderFlag.TF32)
    for profile in parsed["profiles"]:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            p.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(p) < 0:
            sys.exit("invalid optimization profile")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        sys.exit("engine build failed")
    with open(opts["--saveEngine"], "wb") as f:
        f.write(plan)
