"""Provider choice with CUDA simulated: working, listed but falling back, missing; package conflicts."""

import os
import warnings

import onnxruntime as ort
import pytest

from mcdrop.runtime import providers
from mcdrop.runtime.errors import DeviceError, ModelFileError
from mcdrop.runtime.providers import CPU, CUDA
from mcdrop.runtime.session import MCSession


def names(requested):
    """The provider names of a providers list (an entry may be (name, options))."""
    return [p[0] if isinstance(p, tuple) else p for p in requested]


class FakeSession:
    """Stands in for ort.InferenceSession; `cuda_works` decides what a CUDA request gets."""

    created = []

    def __init__(self, model_bytes, sess_options=None, providers=None, cuda_works=True, noise=b""):
        if CUDA in names(providers) and noise:
            os.write(2, noise)  # what onnxruntime's logger does when CUDA fails
        self.options = sess_options
        self.requested = list(providers)
        self._providers = [p for p in names(providers) if p != CUDA or cuda_works]
        FakeSession.created.append(self)

    def get_providers(self):
        return self._providers


def factory(**behaviour):
    FakeSession.created = []
    return lambda model_bytes, sess_options, providers: FakeSession(
        model_bytes, sess_options, providers, **behaviour)


@pytest.fixture
def cuda_listed(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])


@pytest.fixture
def cuda_missing(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])


def create(device, **behaviour):
    return providers.create_session(b"model", device, ort.SessionOptions(), factory(**behaviour))


def test_cuda_available_and_working(cuda_listed):
    for device in ("auto", "cuda"):
        session = create(device)
        assert session.get_providers()[0] == CUDA
        # TF32 off: CUDA's results stay within float32 rounding of the CPU's; no cuDNN search per
        # new shape (bench/cuda.py, BENCHMARKS.md: CUDA provider)
        assert session.requested == [(CUDA, {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}), CPU]
        assert session.options.log_severity_level == providers.QUIET_LOG_LEVEL
    assert create("cpu").requested == [CPU]


def test_cuda_listed_but_falling_back(cuda_listed, capfd):
    session = create("auto", cuda_works=False, noise=b"onnxruntime: CUDA failure 35\n")
    assert session.get_providers() == [CPU]
    with pytest.raises(DeviceError, match="could not start it"):
        create("cuda", cuda_works=False, noise=b"onnxruntime: CUDA failure 35\n")
    os.write(2, b"after\n")  # file descriptor 2 is back
    assert capfd.readouterr().err == "after\n"


def test_cuda_not_available(cuda_missing):
    session = create("auto")
    assert session.get_providers() == [CPU]
    assert [s.requested for s in FakeSession.created] == [[CPU]]
    with pytest.raises(DeviceError, match="no CUDAExecutionProvider"):
        create("cuda")


def test_cuda_session_that_raises_falls_back_for_auto(cuda_listed):
    def flaky(model_bytes, sess_options, providers):
        if CUDA in names(providers):
            raise RuntimeError("CUDA out of memory")
        return FakeSession(model_bytes, sess_options, providers)

    session = providers.create_session(b"model", "auto", ort.SessionOptions(), flaky)
    assert session.get_providers() == [CPU]
    with pytest.raises(RuntimeError):
        providers.create_session(b"model", "cuda", ort.SessionOptions(), flaky)


def test_unknown_device_lists_the_choices():
    with pytest.raises(DeviceError, match="auto, cpu, cuda"):
        create("gpu")


def test_mcsession_reports_the_provider_really_used(toy_model_path, cuda_listed):
    # A real CPU session answering a CUDA request, as onnxruntime does when CUDA cannot start.
    def falls_back(model_bytes, sess_options, providers):
        return ort.InferenceSession(model_bytes, sess_options=sess_options, providers=[CPU])

    assert MCSession(toy_model_path, device="auto", session_factory=falls_back).provider == CPU
    with pytest.raises(DeviceError):
        MCSession(toy_model_path, device="cuda", session_factory=falls_back)


def test_real_onnxruntime_gives_cuda_or_a_device_error(toy_model_path):
    try:
        assert MCSession(toy_model_path, device="cuda").provider == CUDA
    except DeviceError as err:
        assert "cuda" in str(err)
    assert MCSession(toy_model_path, device="auto").provider in (CUDA, CPU)


class FakeDistribution:
    def __init__(self, name):
        self.metadata = {"Name": name}


def test_conflicting_onnxruntime_packages_are_detected():
    installed = [FakeDistribution(n) for n in ("numpy", "onnxruntime", "onnxruntime_gpu", "onnx", "onnxruntime-gpu")]
    names = providers.onnxruntime_distributions(installed)
    assert names == ["onnxruntime", "onnxruntime-gpu"]
    message = providers.conflict_message(names)
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in message
    assert providers.conflict_message(["onnxruntime-gpu"]) is None
    assert providers.onnxruntime_distributions([FakeDistribution("onnx")]) == []


def test_conflict_warns_once(monkeypatch):
    monkeypatch.setattr(providers, "onnxruntime_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    providers.warn_if_conflicting.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            providers.warn_if_conflicting()
            providers.warn_if_conflicting()
        assert len(caught) == 1 and "pip install onnxruntime-gpu" in str(caught[0].message)
    finally:
        providers.warn_if_conflicting.cache_clear()


def test_onnxruntime_choking_on_a_name_that_is_not_utf8_is_a_model_file_error(toy_model_path):
    """onnxruntime quotes names from the file in its errors; where one is not UTF-8, pybind11
    raises UnicodeDecodeError instead of onnxruntime's own error (tests/test_fuzz.py met one)."""
    def chokes(*args, **kwargs):
        raise UnicodeDecodeError("utf-8", b"\xe4", 0, 1, "invalid continuation byte")

    with pytest.raises(ModelFileError, match=r"cannot load it \(a name in the file is not UTF-8\)$"):
        MCSession(toy_model_path, device="cpu", session_factory=chokes)
