import pytest

from llem_agent.contract import DatasetConfig
from llem_agent.prompts import DatasetError, load_prompts


def test_builtin_set_gives_exactly_n_prompts():
    prompts = load_prompts(DatasetConfig(source="builtin", n_prompts=40), seed=1)
    assert len(prompts) == 40
    assert len(set(prompts)) == 40


def test_orders():
    base = load_prompts(DatasetConfig(source="builtin", n_prompts=20), seed=1)
    grouped = load_prompts(DatasetConfig(source="builtin", n_prompts=20, order="grouped"), seed=1)
    shuffled = load_prompts(DatasetConfig(source="builtin", n_prompts=20, order="shuffled"), seed=1)
    assert grouped == sorted(base, key=len)
    assert sorted(shuffled) == sorted(base) and shuffled != base
    assert shuffled == load_prompts(DatasetConfig(source="builtin", n_prompts=20, order="shuffled"), seed=1)


def test_jsonl_relative_to_base_dir(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n"b"\n\n{"text": "c"}\n')
    assert load_prompts(DatasetConfig(source="p.jsonl", n_prompts=3), 0, tmp_path) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("content", "source", "n", "message"),
    [
        ('{"prompt": "a"}\n', "p.jsonl", 2, "has 1 prompts but n_prompts is 2"),
        ("{oops\n", "p.jsonl", 1, "p.jsonl:1: not valid JSON"),
        ('{"other": 1}\n', "p.jsonl", 1, "expected a string or an object"),
        ("", "missing.jsonl", 1, "dataset file not found"),
        ("", "something", 1, "neither a .jsonl file"),
    ],
)
def test_bad_sources(tmp_path, content, source, n, message):
    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_prompts(DatasetConfig(source=source, n_prompts=n), 0, tmp_path)
