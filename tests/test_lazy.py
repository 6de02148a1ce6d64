import json

import pytest

from ilora_export.errors import IloraError
from ilora_export.lazy import require


def test_require_returns_the_first_module_and_imports_the_rest():
    assert require("json", "json.decoder", purpose="reading") is json


def test_a_missing_module_is_one_error_with_the_install_hint():
    with pytest.raises(IloraError) as err:
        require("json", "no_such_module_xyz", purpose="the ort backend", install="pip install xyz")
    assert err.value.message.startswith("the ort backend needs no_such_module_xyz, which is not installed")
    assert err.value.hint == "pip install xyz"
