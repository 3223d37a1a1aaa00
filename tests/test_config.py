"""TrainConfig: every option once, validated once, one-line errors that name the option."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsekit import SparseMLP, train
from sparsekit.training.config import TrainConfig, check_layer_sizes


@pytest.mark.parametrize("options,match", [
    ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"epochs": True}, "epochs must be an integer"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"warmup_epochs": -3}, "warmup_epochs must be >= 0"),
    ({"batch_size": "64"}, "batch_size must be an integer"),
    ({"lr": 0}, r"lr must be > 0"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
    ({"zeta": -0.1}, "zeta must lie in"),
    ({"momentum": 1.0}, "momentum must lie in"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"optimizer": "adam", "decay": "decoupled"}, "use optimizer='adamw'"),
    ({"optimizer": "adamw", "decay": "coupled"}, "optimizer 'adamw' decouples"),
    ({"optimizer": "adam", "nesterov": True}, "nesterov needs optimizer 'sgd'"),
    ({"betas": (0.9,)}, "betas must be two numbers"),
    ({"betas": (0.9, 1.0)}, "betas must lie in"),
    ({"method": "magic"}, "method must be one of"),
    ({"lr_schedule": "exp"}, "lr_schedule must be one of"),
    ({"evolve_every": 0}, "evolve_every must be >= 1"),
    ({"prune_start": 2.0}, "prune_start must be an integer"),
    ({"wasap_mode": "semi"}, "wasap_mode must be one of"),
    ({"phase1_fraction": 1.5}, r"phase1_fraction must lie in \[0, 1\]"),
    ({"fan_in": "sparse"}, "fan_in must be one of"),
    ({"dtype": "float16"}, "dtype must be one of"),
    ({"progress": "yes"}, "progress must be true or false"),
    ({"backend": "tpu"}, "backend must be one of"),
    ({"backend": 5}, "backend must be a name or a Backend"),
    ({"memory_limit": "lots"}, "memory_limit must be a size like"),
    ({"memory_limit": "150%"}, r"memory_limit percentage must lie in \(0, 100\]"),
    ({"gpu_memory_limit": -5}, "gpu_memory_limit must be > 0 bytes"),
    ({"method": "static", "method_params": {"zeta": 0.1}}, "method 'static' takes no"),
    ({"method": "set", "method_params": {"init": "he_unifrom"}}, "init must be one of"),
    ({"parallel": "wasap", "method": "gse"}, "parallel='wasap' supports methods 'set'"),
    ({"parallel": "wasap", "wasap_mode": "async", "prune_start": 1},
     "prune_start .* is not supported with wasap mode 'async'"),
])
def test_bad_values_are_one_line_errors_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match) as info:
        TrainConfig(**options)
    assert "\n" not in str(info.value)


def test_unknown_option_suggests_the_closest_name():
    with pytest.raises(TypeError, match="unknown training option 'lrr'; did you mean 'lr'"):
        TrainConfig.from_dict({"lrr": 0.1})
    with pytest.raises(TypeError, match="unknown training option 'epoch'"):
        train([4, 3, 2], (np.zeros((8, 4), np.float32), np.zeros(8, int)), epoch=3)


def test_optimizer_defaults_follow_the_optimizer():
    sgd = TrainConfig()
    assert (sgd.lr, sgd.weight_decay, sgd.decay) == (0.01, 2e-4, "coupled")
    adam = TrainConfig(optimizer="adam")
    assert (adam.lr, adam.weight_decay, adam.decay) == (1e-3, 0.0, "coupled")
    adamw = sgd.replace(optimizer="adamw")  # the defaults move with the optimizer ...
    assert (adamw.lr, adamw.weight_decay, adamw.decay) == (1e-3, 0.01, "decoupled")
    mine = TrainConfig(lr=0.05).replace(optimizer="adam")  # ... values given explicitly stay
    assert mine.lr == 0.05 and mine.weight_decay == 0.0


def test_json_round_trip_is_exact():
    cfg = TrainConfig(optimizer="adamw", betas=[0.8, 0.99], method="gse",
                      method_params={"gamma": 2.0}, epochs=7, seed=3, prune_start=2)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_layer_sizes_are_positive_integers():
    assert check_layer_sizes((784, np.int64(10))) == [784, 10]
    for bad in ([64, 32.7, 10], [64, 0, 10], [64], [64, True], "784,10"):
        with pytest.raises(ValueError, match="layer_sizes"):
            check_layer_sizes(bad)
    with pytest.raises(ValueError, match="layer_sizes must be positive integers"):
        SparseMLP([64, 32.7, 10])
    x, y = np.zeros((8, 64), np.float32), np.zeros(8, int)
    with pytest.raises(ValueError, match="32.7"):
        train([64, 32.7, 10], (x, y), epochs=1, batch_size=4)


def test_train_takes_a_config_and_keyword_overrides():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    cfg = TrainConfig(epochs=2, batch_size=16, epsilon=2, optimizer="adam")
    a = train([6, 8, 2], (x, y), cfg)
    b = train([6, 8, 2], (x, y), cfg.replace(epochs=1), epochs=2)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert list(a.model.layers[0].state_w) == ["exp_avg", "exp_avg_sq"]
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train([6, 8, 2], (x, y), {"epochs": 2})
