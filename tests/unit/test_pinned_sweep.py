"""Sweep expansion pinned point by point (issue 22, section 2): dependent groups, the grid's order,
its size counted without building it, and the merges that must never share state."""

from __future__ import annotations

import pytest

from llem.errors import ConfigError
from llem.sweep import count_configs, deep_merge, expand, set_dotted

SHARED = {"model": "m", "engine": "pytorch"}


def test_a_group_contributes_its_variants_as_one_dimension():
    # Two variants from the first entry (batch sizes 1 and 2 at float16), one from the second:
    # 3 alternatives, crossed with the 2 values of the axis: 6 points, axes first.
    sweep = {
        "dataset.n_prompts": [5, 10],
        "precision": [{"dtype": "float16", "pytorch.batch_size": [1, 2]}, {"dtype": "bfloat16"}],
    }
    configs = expand(SHARED, sweep, None)
    points = [(c["dataset"]["n_prompts"], c["dtype"], c.get("pytorch", {}).get("batch_size")) for c in configs]
    assert points == [
        (5, "float16", 1), (5, "float16", 2), (5, "bfloat16", None),
        (10, "float16", 1), (10, "float16", 2), (10, "bfloat16", None),
    ]  # fmt: skip
    assert count_configs(SHARED, sweep, None) == 6
    assert all("precision" not in c for c in configs)  # a group's name is not a field


def test_a_group_entry_with_two_lists_is_their_product():
    sweep = {"g": [{"pytorch.batch_size": [1, 2], "dtype": ["float16", "bfloat16"], "dataset.n_prompts": 3}]}
    configs = expand(SHARED, sweep, None)
    assert [(c["pytorch"]["batch_size"], c["dtype"], c["dataset"]["n_prompts"]) for c in configs] == [
        (1, "float16", 3), (1, "bfloat16", 3), (2, "float16", 3), (2, "bfloat16", 3),
    ]  # fmt: skip
    assert count_configs(SHARED, sweep, None) == 4


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"g": [{"": 1}]}, r"sweep\.g\[0\]: keys must be non-empty strings, got ''"),
        ({"g": [{"dtype": "float16"}, {3: 1}]}, r"sweep\.g\[1\]: keys must be non-empty strings, got 3"),
        ({"g": [{"dtype": []}]}, r"sweep\.g\[0\]\.dtype: a list here must be a non-empty list of scalars"),
        ({"g": [{"dtype": [["a"]]}]}, r"sweep\.g\[0\]\.dtype: a list here must be a non-empty list of scalars"),
        ({"g": [{"dtype": [{"a": 1}]}]}, r"sweep\.g\[0\]\.dtype: a list here must be a non-empty list of scalars"),
        ({"dtype": ["float16"], "DTYPE": [1]}, None),
        ({"pytorch.batch_size": [1], "transformers.batch_size": [{"dtype": "x"}]}, "a group name must not equal"),
        ({"": [1]}, "sweep: keys must be non-empty strings"),
    ],
)
def test_malformed_groups_say_where(sweep, message):
    if message is None:
        assert len(expand(SHARED, sweep, None)) == 1  # keys differ only in case: two axes
        return
    with pytest.raises(ConfigError, match=message):
        expand(SHARED, sweep, None)


def test_a_group_entry_with_only_fixed_keys_is_one_variant():
    configs = expand(SHARED, {"g": [{"dtype": "float16", "pytorch.batch_size": 4}]}, None)
    assert [(c["dtype"], c["pytorch"]["batch_size"]) for c in configs] == [("float16", 4)]


def test_counting_matches_expanding():
    cases = [
        (SHARED, None, None),
        ({"model": "m", "engine": ["pytorch", "vllm"]}, None, None),
        (
            {"model": "m", "engine": ["pytorch", "vllm"]},
            {"dtype": ["a", "b", "c"], "vllm.engine.block_size": [8, 16]},
            None,
        ),
        (SHARED, {"dtype": ["a", "b"]}, [{"dtype": "c"}, {"dtype": "d"}]),
        (SHARED, None, [{"dtype": "c"}]),
    ]  # fmt: skip
    sizes = [count_configs(*case) for case in cases]
    assert sizes == [len(expand(*case)) or 1 for case in cases]
    # One config; two engines; pytorch 3 + vllm 3 x 2 = 9; 2 + 2 explicit = 4; one explicit.
    assert sizes == [1, 2, 9, 4, 1]
    assert count_configs(SHARED, {"dtype": "not a list"}, None) == 1  # expand() says what is wrong


def test_engines_are_named_once_whatever_their_alias():
    configs = expand({"model": "m", "engine": ["transformers", "pytorch", "vllm"]}, {"dtype": ["a"]}, None)
    assert [c["engine"] for c in configs] == ["pytorch", "vllm"]
    with pytest.raises(ConfigError, match="engine: expected a name or a non-empty list of names"):
        expand({"model": "m", "engine": []}, {"dtype": ["a"]}, None)
    with pytest.raises(ConfigError, match="engine: expected a name or a non-empty list of names"):
        expand({"model": "m", "engine": ["pytorch", 3]}, {"dtype": ["a"]}, None)
    # Without a sweep, an engine list is one experiment per engine; with explicit entries, theirs.
    assert [c["engine"] for c in expand({"model": "m", "engine": ["pytorch", "vllm"]}, None, None)] == [
        "pytorch",
        "vllm",
    ]


def test_transformers_is_the_pytorch_section():
    configs = expand({"model": "m", "engine": "pytorch", "transformers": {"batch_size": 2}}, {"dtype": ["a"]}, None)
    assert configs[0]["pytorch"] == {"batch_size": 2} and "transformers" not in configs[0]
    with pytest.raises(ConfigError, match="give either 'pytorch:' or 'transformers:', not both"):
        expand({"model": "m", "pytorch": {}, "transformers": {}}, None, None)
    explicit = expand(SHARED, None, [{"transformers": {"batch_size": 8}}])
    assert explicit[0]["pytorch"] == {"batch_size": 8}


def test_explicit_experiments_are_checked_one_by_one():
    with pytest.raises(ConfigError, match=r"experiments\[1\]: expected a mapping, got str"):
        expand(SHARED, None, [{"dtype": "a"}, "dtype: b"])
    with pytest.raises(ConfigError, match=r"experiments\[0\]: give one engine per explicit experiment"):
        expand({"model": "m"}, None, [{"engine": ["pytorch", "vllm"]}])


def test_set_dotted_refuses_to_go_through_a_value():
    target = {"pytorch": 3}
    with pytest.raises(ConfigError, match=r"sweep key 'pytorch\.batch_size': 'pytorch' is a value, not a section"):
        set_dotted(target, "pytorch.batch_size", 1)
    aliased: dict = {}
    set_dotted(aliased, "transformers.batch_size", 4)
    assert aliased == {"pytorch": {"batch_size": 4}}


def test_a_merge_shares_nothing_with_its_inputs():
    base = {"a": {"b": 1}, "keep": {"deep": [1]}}
    override = {"c": {"d": [1, [2]]}, "a": {"e": 2}}
    merged = deep_merge(base, override)
    assert merged == {"a": {"b": 1, "e": 2}, "keep": {"deep": [1]}, "c": {"d": [1, [2]]}}
    merged["keep"]["deep"].append(2)
    merged["c"]["d"][1].append(3)
    assert base == {"a": {"b": 1}, "keep": {"deep": [1]}}
    assert override == {"c": {"d": [1, [2]]}, "a": {"e": 2}}
    # A section replaced by a value, and a value by a section.
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert deep_merge({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_each_grid_point_is_its_own_copy():
    configs = expand({"model": "m", "engine": "pytorch", "dataset": {"source": "x"}}, {"dtype": ["a", "b"]}, None)
    configs[0]["dataset"]["source"] = "changed"
    assert configs[1]["dataset"]["source"] == "x"


def test_messages_are_word_for_word():
    with pytest.raises(ConfigError, match=r"^give either 'pytorch:' or 'transformers:', not both$"):
        expand({"model": "m", "pytorch": {}, "transformers": {}}, None, None)
    with pytest.raises(ConfigError, match=r"^engine: given both as a field and as a sweep axis; give it once$"):
        expand({"model": "m", "engine": "vllm"}, {"engine": ["pytorch"]}, None)


def test_renaming_the_transformers_section_keeps_every_other_key():
    configs = expand({"model": "m", "engine": "pytorch", "transformers": {"batch_size": 2}}, {"dtype": ["a"]}, None)
    assert configs == [{"model": "m", "engine": "pytorch", "pytorch": {"batch_size": 2}, "dtype": "a"}]


def test_a_group_named_as_an_axis_of_another_engine_is_no_conflict():
    sweep = {"pytorch.batch_size": [1, 2], "vllm.batch_size": [{"vllm.engine.max_num_seqs": 4}]}
    configs = expand({"model": "m", "engine": ["pytorch", "vllm"]}, sweep, None)
    assert [c["engine"] for c in configs] == ["pytorch", "pytorch", "vllm"]
    nested = {"pytorch.a.b": [1], "transformers.a.b": [{"dtype": "x"}]}  # the same key, once aliased
    with pytest.raises(ConfigError, match="a group name must not equal an axis key"):
        expand(SHARED, nested, None)


def test_the_engine_is_inferred_from_the_scoped_keys():
    configs = expand({"model": "m"}, {"vllm.engine.block_size": [8, 16]}, None)
    assert [(c["engine"], c["vllm"]["engine"]["block_size"]) for c in configs] == [("vllm", 8), ("vllm", 16)]


def test_no_sweep_and_one_engine_is_no_grid():
    assert expand(SHARED, None, None) == []  # the study is the shared fields themselves
    configs = expand({"model": "m", "engine": ["pytorch", "vllm"], "dataset": {"source": "x"}}, None, None)
    configs[0]["dataset"]["source"] = "changed"
    assert configs[1]["dataset"]["source"] == "x"
