import pytest
import torch

from kdverify.train.models import (
    ARCHITECTURES,
    BlogCNN,
    DeepNN,
    HintonMLP,
    HintRegressor,
    LightNN,
    RandDropout,
    build_model,
    count_parameters,
    forward_flops,
)


def test_tutorial_parameter_counts():
    assert count_parameters(DeepNN()) == 1_186_986
    assert count_parameters(LightNN()) == 267_738


def test_hinton_mlp_sizes():
    teacher = HintonMLP(1200, 0.2, 0.5)
    assert count_parameters(teacher) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert count_parameters(HintonMLP(800)) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10


@pytest.mark.parametrize("model,shape,hidden,fmap", [
    (HintonMLP(800), (1, 28, 28), 800, (800,)),
    (BlogCNN(), (1, 28, 28), 784, (16, 7, 7)),
    (DeepNN(), (3, 32, 32), 2048, (32, 8, 8)),
    (LightNN(), (3, 32, 32), 1024, (16, 8, 8)),
])
def test_taps_agree_with_forward(model, shape, hidden, fmap):
    model.eval()
    x = torch.randn(5, *shape)
    taps = model.forward_taps(x)
    torch.testing.assert_close(taps.logits, model(x))
    assert taps.logits.shape == (5, 10)
    assert taps.hidden.shape == (5, hidden) and taps.feature_map.shape == (5, *fmap)


def test_regressor_maps_student_onto_teacher_channels():
    assert HintRegressor()(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)


def test_regressor_is_built_from_the_two_feature_map_shapes():
    """Any pair: other channel counts, other spatial sizes (pooled to the teacher's), flat maps (a linear layer)."""
    assert HintRegressor.for_shapes((24, 8, 8), (48, 4, 4))(torch.randn(2, 24, 8, 8)).shape == (2, 48, 4, 4)
    assert HintRegressor.for_shapes((16, 8, 8), (32, 8, 8))(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    assert HintRegressor.for_shapes((800,), (1200,))(torch.randn(2, 800)).shape == (2, 1200)
    with pytest.raises(ValueError, match="both must be \\(C, H, W\\) or both flat"):
        HintRegressor.for_shapes((800,), (32, 8, 8))


def test_builtin_models_take_their_shape_from_the_data():
    from kdverify.train.models import shape_kwargs

    for arch in ("blog_cnn", "deep_nn", "light_nn"):
        model = build_model(arch, **shape_kwargs(arch, (1, 20, 24), 7))  # grey 20x24 images, 7 classes
        assert model(torch.zeros(2, 1, 20, 24)).shape == (2, 7)
    mlp = build_model("hinton_mlp", **shape_kwargs("hinton_mlp", (3, 8, 8), 4))
    assert mlp(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_build_model_and_unknown_arch():
    assert {"hinton_mlp", "blog_cnn", "deep_nn", "light_nn"} <= set(ARCHITECTURES)  # installed plugins may add more
    assert isinstance(build_model("hinton_mlp", hidden=30), HintonMLP)
    with pytest.raises(KeyError, match="unknown architecture"):
        build_model("resnet")


def test_output_layer_is_last_linear():
    m = DeepNN()
    assert m.output_layer is m.classifier[-1]


def test_forward_flops_are_exact():
    """2 FLOPs per multiply-add of every Linear and Conv2d, counted by hand from the layer shapes."""
    assert forward_flops(HintonMLP(1200), (1, 28, 28)) == 2 * (784 * 1200 + 1200 * 1200 + 1200 * 10)
    assert forward_flops(HintonMLP(800), (1, 28, 28)) == 2 * (784 * 800 + 800 * 800 + 800 * 10)
    light = 2 * (3 * 9 * 16 * 32 * 32  # conv 3->16, 3x3, at 32x32
                 + 16 * 9 * 16 * 16 * 16  # conv 16->16, 3x3, at 16x16 (after the first pool)
                 + 1024 * 256 + 256 * 10)
    assert forward_flops(LightNN(), (3, 32, 32)) == light == 2_593_792
    deep = 2 * (3 * 9 * 128 * 32 * 32  # conv 3->128 at 32x32
                + 128 * 9 * 64 * 32 * 32  # conv 128->64 at 32x32
                + 64 * 9 * 64 * 16 * 16  # conv 64->64 at 16x16
                + 64 * 9 * 32 * 16 * 16  # conv 64->32 at 16x16
                + 2048 * 512 + 512 * 10)
    assert forward_flops(DeepNN(), (3, 32, 32)) == deep == 188_491_776
    blog = 2 * (1 * 25 * 8 * 32 * 32  # conv 1->8, 5x5, padding 4: 28 -> 32
                + 8 * 25 * 16 * 14 * 14  # conv 8->16, 5x5, stride 2: 32 -> 14
                + 784 * 256 + 256 * 128 + 128 * 10)
    assert forward_flops(BlogCNN(), (1, 28, 28)) == blog


@pytest.mark.parametrize("p", [0.5, 0.2, 0.25, 0.1, 0.75])
def test_rand_dropout_matches_nn_dropout_in_expectation_and_is_identity_in_eval(p: float):
    """Both mask paths: packed bits through the lookup table (0.5, 0.25, 0.75) and 16-bit fields (0.2, 0.1)."""
    torch.manual_seed(0)
    drop = RandDropout(p)
    x = torch.ones(400, 1000, requires_grad=True)
    y = drop(x)
    dropped = y == 0
    assert abs(dropped.float().mean().item() - p) < 0.005  # 400k draws: 3 sigma is at most 0.0024
    # every position inside a packed word is its own fair draw: the rate per position mod 64 is p too
    per_position = dropped.view(-1, 64).float().mean(0)
    assert (per_position - p).abs().max() < 0.03  # 6250 draws per position: 3 sigma is at most 0.019
    neighbours = torch.corrcoef(torch.stack([dropped.view(-1)[:-1].float(), dropped.view(-1)[1:].float()]))[0, 1]
    assert abs(neighbours.item()) < 0.01  # no correlation between adjacent bits of one draw
    assert torch.allclose(y[~dropped], torch.tensor(1 / (1 - p)))  # inverted scaling like nn.Dropout
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient flows through kept units only, same scale
    drop.eval()
    assert drop(x) is x
    assert RandDropout(0.0)(x) is x


def test_rand_dropout_is_reproducible_from_the_torch_seed_and_handles_odd_sizes():
    x = torch.ones(3, 7, 5)  # 105 elements: not a multiple of a word's fields
    torch.manual_seed(1)
    a = RandDropout(0.5)(x)
    torch.manual_seed(1)
    assert torch.equal(a, RandDropout(0.5)(x))
    assert a.shape == x.shape and set(a.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(RandDropout(1.0)(x), torch.zeros_like(x))  # p = 1 drops everything, no inf or NaN


def test_teacher_mlp_keeps_nn_dropout_state_dict_layout():
    """RandDropout has no parameters: checkpoints of the MLP keep the layer indices they always had."""
    keys = list(build_model("hinton_mlp", hidden=16, input_dropout=0.2, hidden_dropout=0.5).state_dict())
    assert keys == ["features.2.weight", "features.2.bias", "features.5.weight", "features.5.bias",
                    "classifier.0.weight", "classifier.0.bias"]
