"""Bad and hostile input: refused with one line (exit 2), in bounded time and memory.
Each case crashed (exit 70), hung or ate memory before the fix."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from llem import session as cli  # planning moved below the command line (issue 21)
from llem.cli import main
from llem.errors import ConfigError
from llem.yamlsafe import load

BOMB = "model: gpt2\npassthrough_kwargs:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9)
)  # 10^10 nodes once expanded


def refused(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    study = tmp_path / "study.yaml"
    study.write_text(text)
    assert main(["run", str(study), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path, capsys):
    assert "alias bomb" in refused(tmp_path, BOMB, capsys)


def test_aliases_and_merge_keys_of_a_normal_study_still_load():
    data = load("base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\nlist: [*b, *b]\n", "t.yaml")
    assert data["use"] == {"x": 1, "y": 3} and data["list"] == [{"x": 1, "y": 2}] * 2


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="alias bomb"):
        load("a: &a [1, *a]\n", "t.yaml")


def test_a_key_given_twice_names_both_lines(tmp_path, capsys):
    err = refused(tmp_path, "model: gpt2\nengine: pytorch\nmax_output_tokens: 8\nengine: vllm\n", capsys)
    assert "key 'engine' appears twice in one mapping (lines 2 and 4)" in err
    nested = refused(tmp_path, "model: gpt2\ndecoder:\n  top_k: 5\n  top_k: 6\n", capsys)
    assert "lines 3 and 4" in nested


def test_nesting_thousands_deep_is_one_line_not_a_recursion_error(tmp_path, capsys):
    assert "nested more than 64 levels" in refused(tmp_path, "model: gpt2\nx: " + "[" * 5000 + "]" * 5000, capsys)
    assert "nested more than" in refused(tmp_path, "model: gpt2\nx:\n" + "".join(
        "  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "v: 1\n", capsys)  # fmt: skip


def test_a_sweep_of_ten_billion_points_is_counted_not_built(tmp_path, capsys):
    axes = "".join(f"  {key}: [{', '.join(str(i + 1) for i in range(100))}]\n" for key in (
        "decoder.top_k", "warmup.n_warmup", "random_seed", "max_output_tokens", "max_input_tokens"))  # fmt: skip
    err = refused(tmp_path, "model: gpt2\nsweep:\n" + axes, capsys)
    assert "10,000,000,000 experiments" in err and "--max-experiments" in err


def test_the_limits_are_flags_for_people_who_mean_it(tmp_path, capsys):
    text = "model: gpt2\nsweep:\n  random_seed: [1, 2, 3]\nstudy_execution: {n_cycles: 4}\n"
    assert "--max-experiments" in refused(tmp_path, text, capsys, "--max-experiments", "2")
    assert "3 experiments x 4 cycles = 12 runs" in refused(tmp_path, text, capsys, "--max-runs", "10")
    study = tmp_path / "study.yaml"
    assert main(["run", str(study), "--dry-run", "--max-runs", "12"]) == 0


def test_two_million_runs_are_refused_before_planning(tmp_path, capsys):
    # n_cycles itself is at most 1,000,000 (a billion is refused by its range: test_hostile_studies.py).
    text = "model: gpt2\nsweep: {random_seed: [1, 2]}\nstudy_execution: {n_cycles: 1000000}\n"
    assert "2,000,000 runs" in refused(tmp_path, text, capsys)


def test_a_model_directory_linked_to_root_is_refused_without_walking_it(tmp_path, capsys):
    os.symlink("/", tmp_path / "model")
    err = refused(tmp_path, "model: ./model\n", capsys)
    assert "holds no model (no config.json)" in err and "chmod" not in err


def test_a_model_directory_without_a_model_is_found_out_up_front(tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    assert "holds no model" in refused(tmp_path, "model: ./notamodel\n", capsys)


def test_the_readability_check_never_leaves_the_model_directory(tmp_path):
    from llem.models import check_readable_by_agent

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.symlink("/", model / "escape")  # a link to a directory is not followed
    secret = model / "weights.safetensors"
    secret.write_text("x")
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match=r"weights.safetensors is readable only by its owner"):
        check_readable_by_agent(model, 0)
    secret.chmod(0o644)
    check_readable_by_agent(model, 0)


def test_the_cycle_collector_is_off_while_planning_and_back_on_after_even_on_error(
    study_file: Path, tmp_path: Path, monkeypatch, capsys
):
    """Planning pauses Python's cycle collector (large grids spent 40% of their time in it); a
    study then runs for hours, so it must be back on whichever way planning ends."""
    seen: list[bool] = []
    real = cli.make_plan

    def spying_make_plan(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "make_plan", spying_make_plan)
    assert gc.isenabled()
    assert main(["run", str(study_file), "--dry-run"]) == 0
    assert seen == [False] and gc.isenabled()

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: ./nowhere\n")
    assert main(["run", str(bad), "--dry-run"]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert gc.isenabled()


def _outcome(code: int | None) -> object:
    from llem.runner import ContainerOutcome

    return ContainerOutcome(exit_code=code, timed_out=False, oom_killed=False, duration_s=1.0)


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_heartbeat_or_error_the_container_made_a_fifo_or_huge_is_not_waited_on_nor_read_whole(tmp_path):
    """The run directory is the container's to write: a FIFO would have hung the host's read
    (no writer), a 10 GiB error.json would have been read whole into memory."""
    import multiprocessing

    from llem.onerun import collect
    from llem.runner import _patience_s
    from llem.studydir import MAX_ERROR_BYTES

    def bounded() -> None:  # in a child process: a hang fails the test instead of stalling it
        heartbeat = _fifo(tmp_path / "heartbeat")
        assert _patience_s(heartbeat) == 0.0
        _fifo(tmp_path / "error.json")
        result, failure = collect(tmp_path, "e001-c1", _outcome(1))  # type: ignore[arg-type]
        assert result is None and failure is not None and failure.kind == "no_result"

    child = multiprocessing.get_context("fork").Process(target=bounded)
    child.start()
    child.join(30)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0, "a FIFO in the run directory stalled the host"
    # Over the bound: not read (a sparse file: its size is all it costs), the run still concludes.
    big = tmp_path / "big"
    big.mkdir()
    with (big / "error.json").open("wb") as handle:
        handle.truncate(MAX_ERROR_BYTES + 1)
    result, failure = collect(big, "e001-c1", _outcome(1))  # type: ignore[arg-type]
    assert result is None and failure is not None and failure.kind == "no_result"
    # Within it, an agent's error is the run's failure as before.
    small = tmp_path / "small"
    small.mkdir()
    (small / "error.json").write_text(
        '{"run_id": "e001-c1", "type": "RuntimeError", "message": "boom", "phase": "load", "traceback": ""}'
    )
    result, failure = collect(small, "e001-c1", _outcome(1))  # type: ignore[arg-type]
    assert failure is not None and failure.message == "load: boom"
