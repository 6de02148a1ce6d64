"""Optional heavy dependencies, imported when first needed: one place that says what to install.

``require("onnxruntime", purpose="the ort backend", install='pip install "ilora-export[onnx]"')``
returns the module, or raises :class:`~ilora_export.errors.IloraError` naming what is missing and
how to install it, so a missing extra is one ``Error:`` / ``Hint:`` line instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ilora_export.errors import IloraError

ONNX_EXTRA = 'pip install "ilora-export[onnx]"'


def require(*modules: str, purpose: str, install: str = ONNX_EXTRA) -> ModuleType:
    """Import every module of ``modules`` (dotted names) and return the first one."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as err:
            raise IloraError(
                f"{purpose} needs {name}, which is not installed or does not import ({err})", install
            ) from None
    return loaded[0]


def pyplot(log=print):
    """matplotlib.pyplot on the file-only Agg backend, or None (after one line to ``log``) without matplotlib:
    benchmarks write their JSON and Markdown either way, the PNG only with it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no PNG (pip install 'ilora-export[bench]')")
        return None
    return plt
