import dataclasses

import pytest

from nucleate.config import Params, ParamsError, load_params, params_from_dict


def test_repo_params_file_is_valid(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert isinstance(params, Params)
    assert params.select.strategy == "pcoreset"
    assert params.teacher.classes[0] == "nucleus"
    assert "background" not in params.labels


def test_dataclass_defaults_equal_the_shipped_params_file(repo_root):
    """One home for defaults: Params() is exactly what params.yaml says, key by key."""
    import yaml

    shipped = load_params(repo_root / "params.yaml")
    assert shipped == Params()
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    # every field is written out in params.yaml (nothing hides in the dataclasses only)
    for f in dataclasses.fields(Params):
        assert f.name in raw, f"params.yaml lacks {f.name}"
        section = getattr(Params(), f.name)
        if dataclasses.is_dataclass(section):
            missing = [g.name for g in dataclasses.fields(section) if g.name not in raw[f.name]]
            assert not missing, f"params.yaml section {f.name} lacks {missing}"


def test_old_top_level_classes_says_how_to_update():
    with pytest.raises(ParamsError) as err:
        params_from_dict({"classes": ["nucleus", "background"]})
    (line,) = err.value.problems
    assert line.startswith("classes: moved") and "teacher.classes" in line and "labels" in line


def test_params_are_frozen(repo_root):
    params = load_params(repo_root / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.select.budget = 3


def test_missing_keys_take_defaults():
    assert params_from_dict({}) == Params()
    assert params_from_dict({"select": {"budget": 9}}).select.budget == 9


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ParamsError) as err:
        params_from_dict({"select": {"budgett": 3}})
    assert err.value.problems == ["select.budgett: unknown key; did you mean select.budget?"]


def test_unknown_section_is_reported_with_suggestion():
    with pytest.raises(ParamsError) as err:
        params_from_dict({"selct": {}})
    assert err.value.problems == ["selct: unknown key; did you mean select?"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"select": {"budget": 0}}, "select.budget: must be >= 1, got 0"),
        ({"train": {"lr": 0}}, "train.lr: must be > 0.0, got 0.0"),
        ({"pseudomask": {"min_gold_dice": 1.5}}, "pseudomask.min_gold_dice: must be <= 1.0, got 1.5"),
        ({"select": {"strategy": "kmeans"}}, "select.strategy: must be one of"),
        ({"select": {"budget": "5"}}, "select.budget: expected an integer, got str '5'"),
        ({"select": {"budget": True}}, "select.budget: expected an integer, got bool"),
        ({"labels": []}, "labels: must not be empty"),
        ({"teacher": {"classes": ["a", "a"]}}, "teacher.classes: has duplicate entries"),
        ({"labels": "nucleus"}, "labels: expected a list of a string"),
        ({"teacher": 3}, "teacher: expected a mapping of keys"),
        ({"seed": -1}, "seed: must be >= 0, got -1"),
        ({"slides": {"tile_px": 8}}, "slides.tile_px: must be >= 16, got 8"),
        ({"slides": {"target_mpp": 0}}, "slides.target_mpp: must be > 0.0, got 0.0"),
        ({"slides": {"tissue_threshold": 1.5}}, "slides.tissue_threshold: must be <= 1.0, got 1.5"),
    ],
)
def test_bad_values_name_the_key_path(raw, message):
    with pytest.raises(ParamsError) as err:
        params_from_dict(raw)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(message)


def test_all_problems_reported_at_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("select:\n  budgett: 3\n  budget: -2\ntrain:\n  lr: -1\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert len(err.value.problems) == 3
    assert str(path) in str(err.value)


def test_null_model_and_int_as_float_accepted():
    params = params_from_dict({"teacher": {"model": None}, "train": {"lr": 1}})
    assert params.teacher.model is None and params.train.lr == 1.0


def test_invalid_yaml_is_a_params_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("select: [\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)
