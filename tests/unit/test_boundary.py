"""The host never imports an engine stack or the agent's internals; the agent never imports Docker."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

HOST = REPO / "orchestrator"
AGENT = REPO / "images" / "agent" / "llem_agent"
ENGINE_STACKS = {"torch", "transformers", "vllm", "tensorrt_llm", "tensorrt", "tokenizers", "accelerate"}


def imported_modules(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = names
    return found


def test_host_imports_only_the_contract_of_the_agent_and_no_engine_stack():
    for path, names in imported_modules(HOST).items():
        for name in names:
            top = name.split(".")[0]
            assert top not in ENGINE_STACKS, f"{path} imports {name}"
            if top == "llem_agent":
                assert name == "llem_agent.contract" or name.startswith("llem_agent.contract."), (
                    f"{path} imports {name}"
                )


def test_agent_never_imports_docker_or_the_host():
    for path, names in imported_modules(AGENT).items():
        for name in names:
            assert name.split(".")[0] not in {"docker", "orchestrator"}, f"{path} imports {name}"


def test_contract_imports_nothing_heavier_than_pydantic():
    allowed = {
        "pydantic",
        "__future__",
        "typing",
        "hashlib",
        "json",
        "os",
        "tempfile",
        "contextlib",
        "pathlib",
        "types",
    }
    for path, names in imported_modules(AGENT / "contract").items():
        for name in names:
            top = name.split(".")[0]
            assert top in allowed or name.startswith("llem_agent.contract"), f"{path} imports {name}"


def test_importing_the_cli_loads_no_engine_stack():
    code = "import sys, llem.cli, llem.studyloop, llem.docker_runner; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {m.split(".")[0] for m in eval(out)}
    assert not (loaded & ENGINE_STACKS)
