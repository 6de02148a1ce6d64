"""TensorRT engines from an export: profiles, trtexec scripts, the builder and engine metadata.

Everything except the build itself and the TensorRT backend runs without TensorRT; ``tensorrt`` (or
``tensorrt_rtx``) is imported only when an engine is built or loaded.
"""
