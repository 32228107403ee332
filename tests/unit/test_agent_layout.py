"""The agent's layout: no module over 500 lines (issue 21), so each stays readable on its own."""

from __future__ import annotations

from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "images" / "agent" / "llem_agent"
MAX_LINES = 500


def test_no_agent_module_is_over_500_lines():
    sizes = {p.relative_to(AGENT).as_posix(): p.read_text(encoding="utf-8").count("\n") for p in AGENT.rglob("*.py")}
    assert "energy/meter.py" in sizes  # the walk found the package
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
