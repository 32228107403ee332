"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    """A two-experiment, two-cycle study on a local (empty) model directory."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    path = tmp_path / "study.yaml"
    path.write_text("name: t\nmodel: ./model\nsweep:\n  pytorch.batch_size: [1, 2]\nstudy_execution: {n_cycles: 2}\n")
    return path
