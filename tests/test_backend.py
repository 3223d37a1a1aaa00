"""Registry, selection (get_backend, use_backend, SPARSEKIT_BACKEND) and protocol consistency."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from conftest import require_gpu

import sparsekit.backends.registry as backend_mod
from sparsekit import _compat
from sparsekit._cython.backend import CpuBackend
from sparsekit.backends import (
    Backend,
    available_backends,
    get_backend,
    register_backend,
    use_backend,
)


class Dummy(Backend):
    name = "dummy"


@pytest.fixture
def registry(monkeypatch):
    """A scratch copy of the registry, restored after the test; no backend selected."""
    monkeypatch.setattr(backend_mod, "_FACTORIES", dict(backend_mod._FACTORIES))
    monkeypatch.setattr(backend_mod, "_INSTANCES", {})
    monkeypatch.delenv("SPARSEKIT_BACKEND", raising=False)
    return backend_mod


@pytest.fixture
def no_gpu(monkeypatch, registry):
    monkeypatch.setattr(_compat, "has_cupy_gpu", False)
    monkeypatch.setattr(_compat, "gpu_unavailable_reason", "CuPy is not installed")


def test_cpu_is_registered_and_cached(registry):
    assert "cpu" in available_backends()
    be = get_backend("cpu")
    assert isinstance(be, CpuBackend) and be.name == "cpu" and be.xp is np
    assert get_backend("cpu") is be and get_backend("CPU") is be
    assert get_backend(be) is be


def test_register_backend(registry):
    made = []
    register_backend("dummy", lambda: made.append(1) or Dummy())
    assert "dummy" in available_backends()
    be = get_backend("dummy")
    assert isinstance(be, Dummy) and get_backend("dummy") is be and made == [1]
    register_backend("dummy", Dummy)  # re-registering drops the cached instance
    assert get_backend("dummy") is not be


def test_unknown_backend_names_the_choices(registry):
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; choose one of .*'cpu'.*'gpu'.*'auto'"):
        get_backend("tpu")


def test_gpu_without_cupy_says_what_to_install(no_gpu):
    assert "gpu" not in available_backends()
    with pytest.raises(RuntimeError) as info:
        get_backend("gpu")
    msg = str(info.value)
    assert "CuPy is not installed" in msg
    assert "pip install" in msg and "sparsekit[gpu-cuda12]" in msg and "backend='cpu'" in msg


def test_auto_falls_back_to_cpu(no_gpu):
    assert get_backend("auto").name == "cpu"


@pytest.mark.gpu
def test_auto_picks_the_gpu():
    require_gpu()
    assert get_backend("auto").name == "gpu"
    assert "gpu" in available_backends()


def test_use_backend_restores_on_exit(registry):
    register_backend("dummy", Dummy)
    assert get_backend().name == "cpu"
    with use_backend("dummy") as be:
        assert isinstance(be, Dummy) and get_backend() is be
        with use_backend("cpu"):
            assert get_backend().name == "cpu"
        assert get_backend() is be
    assert get_backend().name == "cpu"


def test_use_backend_restores_on_exception(registry):
    register_backend("dummy", Dummy)
    with pytest.raises(KeyError), use_backend("dummy"):
        assert get_backend().name == "dummy"
        raise KeyError("boom")
    assert get_backend().name == "cpu"


def test_use_backend_refuses_unknown_names(registry):
    with pytest.raises(ValueError, match="unknown backend"), use_backend("nope"):
        pass
    assert get_backend().name == "cpu"


def test_environment_variable_override(registry, monkeypatch):
    register_backend("dummy", Dummy)
    monkeypatch.setenv("SPARSEKIT_BACKEND", "dummy")
    assert get_backend().name == "dummy"
    assert get_backend("cpu").name == "cpu"  # an explicit name wins over the environment
    with use_backend("cpu"):  # and so does use_backend
        assert get_backend().name == "cpu"
    monkeypatch.setenv("SPARSEKIT_BACKEND", "Bogus")
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        get_backend()


def test_environment_auto(no_gpu, monkeypatch):
    monkeypatch.setenv("SPARSEKIT_BACKEND", "auto")
    assert get_backend().name == "cpu"


def test_arrays_move_only_explicitly(backend):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    dev = backend.asarray(x)
    assert type(dev).__module__.split(".")[0] == backend.xp.__name__.split(".")[0]
    assert dev.flags.c_contiguous
    back = backend.to_numpy(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, x)
    assert backend.asarray(x, dtype=np.float64).dtype == np.float64
    backend.synchronize()


# --- protocol consistency (thinc style) ---------------------------------------------------------
def concrete_backends() -> list[type]:
    classes = [CpuBackend]
    if _compat.has_cupy_gpu:  # pragma: no cover - needs a GPU
        from sparsekit._cuda.backend import GpuBackend

        classes.append(GpuBackend)
    return classes


def public_methods(cls) -> dict[str, object]:
    return {name: member for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member)}


@pytest.mark.parametrize("cls", concrete_backends(), ids=lambda c: c.__name__)
def test_every_backend_method_is_in_the_protocol(cls):
    """A method shared code could call on one backend must exist on Backend, same signature,
    so code written against one backend runs on the others."""
    base = public_methods(Backend)
    for name, method in public_methods(cls).items():
        assert name in base, f"{cls.__name__}.{name} is public but not part of Backend"
        got = inspect.signature(method).parameters
        want = inspect.signature(base[name]).parameters
        assert [(p.name, p.kind, p.default) for p in got.values()] == \
            [(p.name, p.kind, p.default) for p in want.values()], \
            f"{cls.__name__}.{name}{inspect.signature(method)} != Backend.{name}{inspect.signature(base[name])}"
    assert isinstance(cls.name, str) and cls.name != Backend.name
    assert cls.xp is not None


@pytest.mark.parametrize("cls", concrete_backends(), ids=lambda c: c.__name__)
def test_every_product_is_implemented(cls):
    """The base class's products are the generic xp reference (gathers and scatters, slow);
    each kernel backend must put its own in their place."""
    for name in ("matmul", "matmul_t", "weight_grad", "sampled_grad"):
        assert getattr(cls, name) is not getattr(Backend, name), f"{cls.__name__}.{name}"


# --- the two kernel packages mirror each other -------------------------------------------------
KERNEL_MODULES = sorted(p.stem for p in
                        (Path(inspect.getfile(CpuBackend)).parent).glob("*.pyx"))


def module_functions(module) -> dict[str, object]:
    return {name: f for name, f in vars(module).items()
            if not name.startswith("_") and callable(f) and not inspect.isclass(f)
            and getattr(f, "__module__", None) == module.__name__}


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_cuda_kernel_modules_mirror_the_cython_ones(name):
    """Each Cython kernel module has a CUDA twin of the same name (importable without CuPy),
    and a function both define takes the same arguments in the same order (the CPU's last one,
    ``num_threads``, aside)."""
    import importlib

    cpu = module_functions(importlib.import_module(f"sparsekit._cython.{name}"))
    gpu = module_functions(importlib.import_module(f"sparsekit._cuda.{name}"))
    shared = sorted(set(cpu) & set(gpu))
    assert shared, name
    for fn in shared:
        want = [p for p in inspect.signature(cpu[fn]).parameters if p != "num_threads"]
        assert list(inspect.signature(gpu[fn]).parameters) == want, f"{name}.{fn}"
