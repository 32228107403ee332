import pytest

from llem.errors import ConfigError
from llem.sweep import count_configs, deep_merge, engine_scope, expand, set_dotted


def test_independent_axes_form_a_cartesian_product_in_order():
    configs = expand(
        {"model": "m", "engine": "pytorch"}, {"dtype": ["float16", "bfloat16"], "dataset.n_prompts": [5, 10]}, None
    )
    assert [(c["dtype"], c["dataset"]["n_prompts"]) for c in configs] == [
        ("float16", 5),
        ("float16", 10),
        ("bfloat16", 5),
        ("bfloat16", 10),
    ]


def test_engine_scoped_key_expands_into_its_section_and_alias_maps_to_pytorch():
    configs = expand({"model": "m", "engine": "transformers"}, {"transformers.batch_size": [1, 2]}, None)
    assert [c["pytorch"] for c in configs] == [{"batch_size": 1}, {"batch_size": 2}]
    assert {c["engine"] for c in configs} == {"pytorch"}


def test_each_engine_gets_its_own_grid():
    sweep = {"dtype": ["float16", "bfloat16"], "pytorch.batch_size": [1, 8, 32], "vllm.engine.max_num_seqs": [64, 256]}
    configs = expand({"model": "m", "engine": ["pytorch", "vllm"]}, sweep, None)
    pytorch = [c for c in configs if c["engine"] == "pytorch"]
    vllm = [c for c in configs if c["engine"] == "vllm"]
    assert len(pytorch) == 6 and len(vllm) == 4
    assert all("vllm" not in c for c in pytorch)
    assert vllm[0]["vllm"] == {"engine": {"max_num_seqs": 64}}


def test_engine_inferred_from_scoped_keys_when_absent():
    configs = expand({"model": "m"}, {"pytorch.batch_size": [1, 2]}, None)
    assert {c["engine"] for c in configs} == {"pytorch"}


def test_scoped_key_for_an_engine_not_in_the_study_is_an_error():
    with pytest.raises(ConfigError, match="scoped to engine 'vllm'"):
        expand({"model": "m", "engine": "pytorch"}, {"vllm.engine.block_size": [8]}, None)


def test_explicit_experiments_merge_with_shared_fields_and_follow_the_sweep():
    shared = {"model": "m", "dataset": {"n_prompts": 50, "source": "builtin"}}
    configs = expand(shared, {"dtype": ["float16"]}, [{"engine": "pytorch", "dataset": {"n_prompts": 7}}])
    assert len(configs) == 2
    assert configs[-1]["dataset"] == {"n_prompts": 7, "source": "builtin"}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"dtype": []}, "non-empty list"),
        ({"dtype": "float16"}, "non-empty list"),
        ({"pytorch.compilation": [{"pytorch.torch_compile": True}, 3]}, "only scalars"),
        ({"dtype": [["a"]]}, "scalars"),
    ],
)
def test_malformed_axes_are_config_errors(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand({"model": "m", "engine": "pytorch"}, sweep, None)


def test_helpers():
    assert engine_scope("pytorch.batch_size") == "pytorch"
    assert engine_scope("transformers.batch_size") == "pytorch"
    assert engine_scope("dataset.n_prompts") is None
    target: dict = {}
    set_dotted(target, "vllm.engine.block_size", 16)
    assert target == {"vllm": {"engine": {"block_size": 16}}}
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    assert deep_merge(base, {"a": {"b": 9}}) == {"a": {"b": 9, "c": 2}, "d": 1}
    assert base == {"a": {"b": 1, "c": 2}, "d": 1}


def test_engine_as_a_sweep_axis_gives_each_engine_its_own_grid():
    sweep = {"engine": ["pytorch", "vllm"], "pytorch.batch_size": [1, 4], "vllm.engine.max_num_seqs": [2, 8]}
    configs = expand({"model": "m"}, sweep, None)
    # was: 2 x 2 x 2 = 8 points, four of them a pytorch experiment with a vllm: section (invalid)
    assert [(c["engine"], c.get("pytorch"), c.get("vllm")) for c in configs] == [
        ("pytorch", {"batch_size": 1}, None),
        ("pytorch", {"batch_size": 4}, None),
        ("vllm", None, {"engine": {"max_num_seqs": 2}}),
        ("vllm", None, {"engine": {"max_num_seqs": 8}}),
    ]
    assert count_configs({"model": "m"}, sweep, None) == 4
    rest = {k: v for k, v in sweep.items() if k != "engine"}
    assert expand({"model": "m"}, sweep, None) == expand({"model": "m", "engine": ["pytorch", "vllm"]}, rest, None)
    with pytest.raises(ConfigError, match="both as a field and as a sweep axis"):
        expand({"model": "m", "engine": "vllm"}, sweep, None)


def test_scoped_keys_of_two_engines_without_engine_are_ambiguous():
    """002: the engine is inferred from the scoped keys, an error where they name more than one."""
    sweep = {"pytorch.batch_size": [1], "vllm.engine.max_num_seqs": [4]}
    message = (
        "sweep.pytorch.batch_size and sweep.vllm.engine.max_num_seqs name 2 engines (pytorch, vllm) but the study "
        "sets no engine:, which is ambiguous; set engine: [pytorch, vllm] to sweep them, each with its own grid, "
        "or engine: NAME for one"
    )
    for call in (expand, count_configs):
        with pytest.raises(ConfigError) as info:
            call({"model": "m"}, sweep, None)
        assert str(info.value) == message  # one line, the same before and after counting


def test_an_engine_section_and_a_key_scoped_to_another_are_ambiguous_too():
    with pytest.raises(ConfigError, match=r"^the pytorch: section and sweep\.vllm\.engine\.block_size name 2 engines"):
        expand({"model": "m", "pytorch": {"batch_size": 2}}, {"vllm.engine.block_size": [8]}, None)
    groups = {"vllm.engine.block_size": [8], "transformers.knobs": [{"pytorch.batch_size": 1}]}  # alias: pytorch
    with pytest.raises(ConfigError, match=r"\(pytorch, vllm\)"):
        expand({"model": "m"}, groups, None)


def test_one_engine_named_twice_is_no_ambiguity():
    configs = expand({"model": "m", "pytorch": {"use_cache": True}}, {"transformers.batch_size": [1, 2]}, None)
    assert [(c["engine"], c["pytorch"]) for c in configs] == [
        ("pytorch", {"use_cache": True, "batch_size": 1}),
        ("pytorch", {"use_cache": True, "batch_size": 2}),
    ]


def test_an_explicit_engine_list_still_sweeps_both_grids():
    sweep = {"pytorch.batch_size": [1], "vllm.engine.max_num_seqs": [4]}
    for shared, sweep_ in (
        ({"model": "m", "engine": ["pytorch", "vllm"]}, sweep),
        ({"model": "m"}, {**sweep, "engine": ["pytorch", "vllm"]}),
    ):
        configs = expand(shared, sweep_, None)
        assert [(c["engine"], c.get("pytorch"), c.get("vllm")) for c in configs] == [
            ("pytorch", {"batch_size": 1}, None),
            ("vllm", None, {"engine": {"max_num_seqs": 4}}),
        ]
        assert count_configs(shared, sweep_, None) == 2


def test_a_group_pairing_each_engine_with_its_settings_is_not_ambiguous():
    sweep = {
        "setup": [{"engine": "pytorch", "pytorch.batch_size": 1}, {"engine": "vllm", "vllm.engine.max_num_seqs": 4}]
    }
    configs = expand({"model": "m"}, sweep, None)
    assert [(c["engine"], c.get("pytorch"), c.get("vllm")) for c in configs] == [
        ("pytorch", {"batch_size": 1}, None),
        ("vllm", None, {"engine": {"max_num_seqs": 4}}),
    ]
