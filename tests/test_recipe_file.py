"""Recipes from TOML: read, validated field by field, registered; every mistake one line naming file and field."""

import pytest
from click.testing import CliRunner

from kdverify.cli import main
from kdverify.train import recipes
from kdverify.train.recipe_file import RecipeFileError, load_recipe_file, read_recipe_file

GOOD = """
[my-teacher]
dataset = "mnist"
arch = "hinton_mlp"
epochs = 2
lr = 0.05
arch_kwargs = { hidden = 32 }

[my-student]
dataset = "mnist"
arch = "hinton_mlp"
epochs = 3
lr = 0.05
objective = "kd"
teacher = "my-teacher"
temperature = 4.0
soft_weight = 0.7
keep_classes = [7, 8]
arch_kwargs = { hidden = 16 }
note = "a tiny student"

[my-student.original]
epochs = 100
"""

BASE = 'dataset = "mnist"\narch = "hinton_mlp"\nepochs = 2\nlr = 0.05\n'


@pytest.fixture
def registry():
    """The recipe registry (conftest's registries_restored puts it back after each test)."""
    return recipes.RECIPES


def test_a_file_registers_fast_and_original_recipes(tmp_path, registry):
    path = tmp_path / "r.toml"
    path.write_text(GOOD)
    fast = load_recipe_file(path)
    assert [r.name for r in fast] == ["my-teacher", "my-student"]
    student = recipes.get_recipe("my-student", "ci")
    assert student.arch_kwargs == {"hidden": 16} and student.keep_classes == (7, 8) and student.epochs == 3
    assert recipes.get_recipe("my-student", "original").epochs == 100  # only what the original table changes
    assert recipes.get_recipe("my-student", "original").temperature == 4.0
    assert load_recipe_file(path) == fast  # reading the same file again is a no-op


@pytest.mark.parametrize("table,match", [
    (BASE + "learning_rate = 3\n", "unknown field\\(s\\) learning_rate; known: name, dataset"),
    (BASE.replace("lr = 0.05", "lr = -1"), "lr = -1 must be a positive number"),
    (BASE.replace("epochs = 2", "epochs = 0"), "epochs = 0 must be at least 1"),
    (BASE.replace("epochs = 2", 'epochs = "two"'), "epochs = 'two' must be a non-negative integer"),
    (BASE + 'optimizer = "adamw"\n', "optimizer = 'adamw' is not one of sgd, adam"),
    (BASE + 'augment = "rotate"\n', "augment = 'rotate' is not one of none, jitter2"),
    (BASE + "soft_weight = 1.5\n", "soft_weight = 1.5 must be between 0 and 1"),
    (BASE + 'objective = "kd"\n', "objective 'kd' needs a teacher recipe"),
    (BASE + 'objective = "mse"\nteacher = "hinton-teacher"\n', "unknown objective 'mse'"),
    (BASE + 'objective = "kd"\nteacher = "nobody"\n', "teacher 'nobody' is neither in this file nor registered"),
    (BASE.replace('"hinton_mlp"', '"resnet"'), "unknown arch 'resnet'.*--import"),
    (BASE.replace('"mnist"', '"svhn"'), "unknown dataset 'svhn'"),
    (BASE + 'keep_classes = ["7"]\n', "keep_classes must be a list of class indices"),
    (BASE + 'name = "other"\n', "sets name = 'other'; the table's name is the name"),
    ('RAW:dataset = "mnist"\n', "'dataset' must be a \\[table\\] of recipe fields"),
    ("arch = 3 = 4\n", "not valid TOML"),
    ("RAW:", "no recipes"),
    ('dataset = "mnist"\n', "missing required field\\(s\\) arch, epochs, lr"),
])
def test_mistakes_are_one_line_errors_naming_file_recipe_and_field(tmp_path, registry, table, match):
    path = tmp_path / "r.toml"
    path.write_text(table[4:] if table.startswith("RAW:") else "[x]\n" + table)
    with pytest.raises(RecipeFileError, match=match) as info:
        read_recipe_file(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_file_cannot_silently_replace_a_builtin(tmp_path, registry):
    path = tmp_path / "r.toml"
    path.write_text("[hinton-teacher]\n" + BASE)
    with pytest.raises(RecipeFileError, match="recipe 'hinton-teacher' is already registered") as info:
        load_recipe_file(path)
    assert "give yours another name" in str(info.value) and len(str(info.value)) < 300  # not the recipe's repr


def test_cli_recipes_lists_a_file_and_rejects_a_bad_one(tmp_path, registry):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(GOOD)
    bad.write_text("[x]\n" + BASE + "learning_rate = 3\n")
    result = CliRunner().invoke(main, ["recipes", "--recipe-file", str(good), "--budget", "original"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("my-student"))
    assert " 100 " in line and "kd" in line and "my-teacher" in line
    result = CliRunner().invoke(main, ["recipes", "--recipe-file", str(bad)])
    assert result.exit_code == 2 and "unknown field(s) learning_rate" in result.output
    result = CliRunner().invoke(main, ["recipes", "--recipe-file", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "cannot read" in result.output


@pytest.mark.parametrize("kwargs,message", [
    ("{ hidden = -5 }", "arch_kwargs {'hidden': -5} are refused by hinton_mlp"),
    ("{ hiden = 100 }", "arch_kwargs: hinton_mlp got an unexpected keyword argument 'hiden'"),
])
def test_bad_constructor_arguments_name_the_file_recipe_and_field(tmp_path, kwargs, message):
    from kdverify.train.recipe_file import RecipeFileError, read_recipe_file

    path = tmp_path / "r.toml"
    path.write_text(f'[mine]\ndataset = "mnist"\narch = "hinton_mlp"\nepochs = 1\nlr = 0.1\narch_kwargs = {kwargs}\n')
    with pytest.raises(RecipeFileError) as info:
        read_recipe_file(path)
    assert str(info.value).startswith(f"{path}: recipe 'mine': ") and message in str(info.value), str(info.value)


def test_a_holdout_larger_than_the_training_split_is_one_line(tiny_mnist):
    from kdverify.data import split_holdout

    with pytest.raises(ValueError, match="holdout = 1,000,000,000 leaves nothing to train on: the training split has "
                                         "2,000 examples"):
        split_holdout(tiny_mnist.train, 10**9)


def test_a_student_that_cannot_join_its_teacher_is_refused_when_the_file_is_read(tmp_path, registry):
    """A FitNets hint from an MLP student to a conv teacher's feature map: one line naming the recipe at load,
    checked on the meta device (the data's shape is declared), not a torch error after data and teacher loaded."""
    path = tmp_path / "r.toml"
    path.write_text('[mlp-hint]\ndataset = "cifar10"\narch = "hinton_mlp"\nepochs = 1\nlr = 0.1\n'
                    'objective = "hint"\nteacher = "tutorial-deepnn"\nsoft_weight = 0.25\n')
    with pytest.raises(RecipeFileError) as info:
        load_recipe_file(path)
    text = str(info.value)
    assert text.startswith(f"{path}: recipe 'mlp-hint': objective 'hint' cannot join student hinton_mlp to teacher "
                           "deep_nn on inputs (3, 32, 32): no hint regressor"), text


MLP = '[mine]\ndataset = "mnist"\narch = "hinton_mlp"\nepochs = 1\nlr = 0.1\n'


@pytest.mark.parametrize("extra,message", [
    # issue 18, case 7: values a recipe file can hold that used to be torch errors after the data loaded or an epoch
    ("holdout = 1000000000", "holdout = 1,000,000,000 leaves nothing to train on (mnist's training split has "
                             "60,000 examples)"),
    ("train_subset = 100\nholdout = 100", "holdout = 100 leaves nothing to train on (train_subset = 100)"),
    ("train_subset = 1000000000", "train_subset = 1,000,000,000 is more than a class-balanced subset of mnist can "
                                  "hold (54,210"),
    ("train_subset = 15", "train_subset = 15 must be a multiple of 10"),
    ("keep_classes = [11]", "keep_classes = [11]: class 11 is not a class index; they are 0..9"),
    ("drop_classes = [-1]", "drop_classes = [-1]: class -1 is not a class index"),
    ("drop_classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "leave no class to train on"),
    ("seed = 99999999999999999999", "seed = 99999999999999999999 must be below 2**62"),
    ("arch_kwargs = { hidden = -5 }", "arch_kwargs {'hidden': -5} are refused by hinton_mlp"),
    ("arch_kwargs = { hiden = 5 }", "arch_kwargs: hinton_mlp got an unexpected keyword argument 'hiden'"),
    ("arch_kwargs = { hidden = 2.5 }", "arch_kwargs: hidden = 2.5 must be an integer (hinton_mlp's default is 1200)"),
    ('arch_kwargs = { hidden = "x" }', "arch_kwargs: hidden = 'x' must be an integer"),
    ("arch_kwargs = { hidden = true }", "arch_kwargs: hidden = True must be an integer"),
    ('arch_kwargs = { input_dropout = "a" }', "arch_kwargs: input_dropout = 'a' must be a number"),
    ("arch_kwargs = { num_classes = 5 }", "hinton_mlp gives outputs of shape (5,) per example; mnist has 10 classes"),
    ("arch_kwargs = { in_features = 5 }", "hinton_mlp does not run on mnist inputs (1, 28, 28)"),
    ("arch_kwargs = { hidden = 100000000000 }", "arch_kwargs {'hidden': 100000000000} are refused by hinton_mlp"),
    ("arch_kwargs = { hidden = 1000000 }", "hinton_mlp's weights alone would take 3,728.3 GiB"),
    ("[mine.original]\nholdout = 70000", "recipe 'mine' (its original table): holdout = 70,000 leaves nothing"),
    ("[mine.original]\narch_kwargs = { hidden = -5 }", "recipe 'mine' (its original table): arch_kwargs "
                                                        "{'hidden': -5} are refused"),
])
def test_values_the_data_or_the_model_cannot_take_are_one_line_when_the_file_is_read(tmp_path, registry, extra,
                                                                                      message):
    path = tmp_path / "r.toml"
    path.write_text(MLP + extra + "\n")
    with pytest.raises(RecipeFileError) as info:
        read_recipe_file(path)
    text = str(info.value)
    assert text.startswith(f"{path}: recipe 'mine'") and message in text and "\n" not in text, text


@pytest.mark.parametrize("extra", ["holdout = 59990", "train_subset = 54210\nholdout = 54200", "keep_classes = [9]",
                                   "arch_kwargs = { hidden = 8, input_dropout = 0.2 }", "seed = 4611686018427387903",
                                   "drop_classes = [0, 1, 2, 3, 4, 5, 6, 7, 8]"])
def test_values_at_the_limits_are_accepted(tmp_path, registry, extra):
    path = tmp_path / "r.toml"
    path.write_text(MLP + extra + "\n")
    assert [fast.name for fast, _ in read_recipe_file(path)] == ["mine"]


def test_a_dataset_without_a_declared_shape_is_checked_as_far_as_the_constructor_goes(tmp_path, registry,
                                                                                      monkeypatch):
    """A user's dataset that declares no shape: wrong types and refused values are still caught at load; the
    class count and split size are not known yet (checked when the data is loaded)."""
    from kdverify import data

    data.LOADERS.register("undeclared", lambda root=None: None)
    base = MLP.replace('"mnist"', '"undeclared"')
    path = tmp_path / "r.toml"
    for extra, message in (("arch_kwargs = { hidden = -5 }", "are refused by hinton_mlp"),
                           ("arch_kwargs = { hidden = 2.5 }", "hidden = 2.5 must be an integer"),
                           ("keep_classes = [-2]", "class -2 is not a class index; they are non-negative")):
        path.write_text(base + extra + "\n")
        with pytest.raises(RecipeFileError, match="recipe 'mine': .*" + message.replace("(", "\\(")):
            read_recipe_file(path)
    path.write_text(base + "holdout = 1000000000\nkeep_classes = [40]\n")
    assert read_recipe_file(path)  # nothing to check these against before the data is loaded


def test_cli_refuses_a_bad_value_before_any_data_is_loaded_or_trained(tmp_path, registry):
    """`kdverify train --recipe-file` with holdout = 10**9 or hidden = -5: a usage error (exit 2), nothing trained
    and nothing written."""
    for extra in ("holdout = 1000000000", "arch_kwargs = { hidden = -5 }", "arch_kwargs = { hiden = 5 }"):
        path = tmp_path / "r.toml"
        path.write_text(MLP + extra + "\n")
        out = tmp_path / "out.pt"
        result = CliRunner().invoke(main, ["train", "--recipe-file", str(path), "--recipe", "mine", "--out", str(out),
                                           "--data-root", str(tmp_path / "no-data")])
        assert result.exit_code == 2, result.output
        assert f"{path}: recipe 'mine': " in result.output and "Traceback" not in result.output
        assert "training mine" not in result.output and not out.exists()


def test_a_bad_recipe_file_on_the_command_line_is_exactly_one_line(tmp_path):
    """Not click's usage block above it: one line naming file, recipe and field, exit 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[x]\ndataset = "mnist"\narch = "hinton_mlp"\nepochs = 1\nlr = 0.1\nholdout = 1000000000\n')
    done = CliRunner().invoke(main, ["recipes", "--recipe-file", str(bad)], prog_name="kdverify")
    assert done.exit_code == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"kdverify: error: {bad}: recipe 'x': holdout = 1,000,000,000 leaves "
                                                "nothing to train on (mnist's training split has 60,000 examples)"]
