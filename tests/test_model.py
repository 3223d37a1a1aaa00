"""SparseMLP forward/backward against a dense NumPy oracle and finite differences."""

import numpy as np
import pytest

from sparsekit.nn.activations import hidden_activations, softmax_cross_entropy
from sparsekit.nn.model import SparseMLP
from sparsekit.training.optim import LRSchedule, MomentumSGD


def dense_forward(model, x_bf, seeds, rate):
    """Oracle: the same network with dense weight matrices and NumPy only."""
    a = x_bf.T
    for layer, act, seed in zip(model.layers[:-1], model.activations, seeds):
        z = layer.w.to_scipy().toarray() @ a + layer.b[:, None]
        slope = act.slope
        a = np.where(z > 0, z, slope * z)
        if rate:
            mask, _ = model.backend.bias_act_dropout(np.ones_like(z), np.zeros(z.shape[0], z.dtype),
                                                     1.0, rate, seed)
            a = a * mask
    out = model.layers[-1]
    return out.w.to_scipy().toarray() @ a + out.b[:, None]


def loss_of(model, x_ib, y, seeds, rate):
    logits, _, _ = model.forward_train(x_ib, seeds, dropout=rate)
    return softmax_cross_entropy(np, logits, y)[0]


@pytest.mark.parametrize("activation", ["allrelu", "relu", "leaky_relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("rate", [0.0, 0.4])
def test_gradients_match_finite_differences(activation, rate):
    rng = np.random.default_rng(3)
    model = SparseMLP([7, 9, 8, 4], epsilon=3, activation=activation, dtype="float64", seed=1)
    for layer in model.layers:
        layer.b[:] = rng.normal(0, 0.3, layer.b.shape)
    x_ib = rng.standard_normal((7, 5))
    y = rng.integers(0, 4, 5)
    seeds = [11, 12]
    logits, acts, derivs = model.forward_train(x_ib, seeds, dropout=rate)
    _, _, dlogits = softmax_cross_entropy(np, logits, y)
    grads = model.backward(acts, derivs, dlogits)
    eps = 1e-6
    for layer, (gw, gb) in zip(model.layers, grads):
        for arr, g in ((layer.w.data, gw), (layer.b, gb)):
            for k in range(0, arr.shape[0], max(1, arr.shape[0] // 7)):
                old = arr[k]
                arr[k] = old + eps
                up = loss_of(model, x_ib, y, seeds, rate)
                arr[k] = old - eps
                down = loss_of(model, x_ib, y, seeds, rate)
                arr[k] = old
                assert g[k] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_forward_matches_dense_oracle(rate):
    rng = np.random.default_rng(0)
    model = SparseMLP([20, 30, 25, 5], epsilon=4, dtype="float64", seed=2)
    x = rng.standard_normal((6, 20))
    logits, _, _ = model.forward_train(np.ascontiguousarray(x.T), [5, 6], dropout=rate)
    np.testing.assert_allclose(logits, dense_forward(model, x, [5, 6], rate), rtol=1e-10)
    probs = model.predict_proba(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(model.predict(x), dense_forward(model, x, [0, 0], 0).argmax(0))


def test_allrelu_slopes_alternate():
    acts = hidden_activations("allrelu", 3, alpha=0.6)
    assert [a.slope for a in acts] == [-0.6, 0.6, -0.6]
    with pytest.raises(ValueError, match="activation"):
        hidden_activations("swish", 2)


def test_paper_architecture_connection_counts():
    model = SparseMLP([784, 1000, 1000, 1000, 10], seed=0)
    assert model.n_connections == [35680, 40000, 40000, 10000]
    assert model.layers[-1].w.nnz == 10 * 1000  # output layer is dense at epsilon 20


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="momentum"):
        MomentumSGD(momentum=1.5)
    with pytest.raises(ValueError, match="dropout"):
        SparseMLP([4, 3, 2], dropout=1.0)
    with pytest.raises(ValueError, match="layer_sizes"):
        SparseMLP([4])
    with pytest.raises(ValueError, match="schedule"):
        LRSchedule("exponential")


def test_lr_schedules():
    assert LRSchedule("constant")(0.1, 5) == 0.1
    assert LRSchedule("step", step_size=2, gamma=0.5)(0.1, 4.5) == pytest.approx(0.025)
    cos = LRSchedule("cosine", epochs=10)
    assert cos(0.1, 0) == pytest.approx(0.1) and cos(0.1, 10) == pytest.approx(0.0)
    warm = LRSchedule("constant", warmup_epochs=2)
    assert warm(0.1, 0) == pytest.approx(0.01) and warm(0.1, 2) == 0.1
