"""Engine-argument contracts against the real libraries, wherever they import.

The engine images have them: the GPU workflow runs this module inside each image, and the
docker tier runs the PyTorch check inside llem's own image (tests/docker/test_engine.py).
"""

from __future__ import annotations

import pytest

from tests.contract.checks import CHECKS


@pytest.mark.parametrize(
    ("engine", "module"), [("pytorch", "transformers"), ("vllm", "vllm"), ("tensorrt", "tensorrt_llm")]
)
def test_engine_arguments_exist_in_the_engine(engine: str, module: str):
    pytest.importorskip(module, reason=f"{module} is importable only inside the {engine} image")
    assert CHECKS[engine]() == []
