"""Tests of onnxruntime session creation: provider choice, fallback, strict mode, name checks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from factories import make_tiny_classifier

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.model.session import (
    PROVIDER_OPTIONS,
    Device,
    OrtSession,
    available_devices,
    create_session,
    parse_device,
    resolve_providers,
    with_provider_options,
)


def test_cpu_is_always_available() -> None:
    assert Device.CPU in available_devices()
    assert available_devices(["CPUExecutionProvider"]) == [Device.CPU]


def test_auto_picks_an_installed_accelerator_before_cpu() -> None:
    dev, chain = resolve_providers("auto", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert dev is Device.CUDA and chain == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    dev, chain = resolve_providers("auto", providers=["CPUExecutionProvider"])
    assert dev is Device.CPU and chain == ["CPUExecutionProvider"]


def test_auto_never_picks_tensorrt_but_tensorrt_by_name_brings_cuda() -> None:
    have = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", providers=have)[0] is Device.CUDA
    dev, chain = resolve_providers("TensorRT", providers=have)
    assert dev is Device.TENSORRT
    assert chain == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_missing_device_warns_naming_what_is_available_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cxrtriage.model.session"):
        dev, chain = resolve_providers("openvino", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert dev is Device.CPU and chain == ["CPUExecutionProvider"]
    assert "openvino" in caplog.text and "available: cpu, cuda" in caplog.text


def test_missing_device_strict_is_a_configuration_error() -> None:
    # exit 4 (configuration), not 3: the model is fine, the machine does not fit the options
    with pytest.raises(ConfigError, match="device 'coreml' is not available.*available: cpu.*--strict-device") as err:
        resolve_providers("coreml", strict=True, providers=["CPUExecutionProvider"])
    assert not isinstance(err.value, ModelError) and err.value.exit_code == 4


def test_unknown_device_lists_choices() -> None:
    with pytest.raises(ConfigError, match="choose one of: auto, cpu, cuda"):
        parse_device("tpu")


def _tiny(tmp_path: Path) -> Path:
    make_tiny_classifier(tmp_path / "m")
    return tmp_path / "m" / "model.onnx"


@pytest.mark.skipif(Device.CUDA in available_devices(), reason="this machine has CUDA")
def test_cuda_on_cpu_machine_falls_back_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cxrtriage.model.session"):
        sess = create_session(_tiny(tmp_path), device="cuda")
    assert sess.device is Device.CPU and sess.providers == ["CPUExecutionProvider"]
    assert "device 'cuda' is not available" in caplog.text and "falling back to cpu" in caplog.text
    assert sess.fallback is not None  # what was asked for, what runs, why: for run.json's notes
    assert sess.fallback.startswith("--device cuda was asked for, but the model ran on cpu: device 'cuda' is not "
                                    "available in this onnxruntime build (needs CUDAExecutionProvider)")
    with pytest.raises(ConfigError, match="cuda"):
        create_session(_tiny(tmp_path), device="cuda", strict_device=True)


def test_no_fallback_is_recorded_when_the_device_asked_for_runs(tmp_path: Path) -> None:
    assert create_session(_tiny(tmp_path), device="cpu").fallback is None
    assert create_session(_tiny(tmp_path), device="auto").fallback is None  # auto takes what there is


@pytest.mark.skipif(Device.CUDA in available_devices(), reason="this machine has CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_a_provider_that_does_not_start_is_a_fallback_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # onnxruntime drops a provider that cannot start (missing libraries) without an error: here CUDA on a machine
    # without it, as if this onnxruntime build had reported it
    from cxrtriage.model import session

    monkeypatch.setattr(session, "resolve_providers", lambda device, strict=False: (
        Device.CUDA, ["CUDAExecutionProvider", "CPUExecutionProvider"]))
    with caplog.at_level(logging.WARNING, logger="cxrtriage.model.session"):
        sess = create_session(_tiny(tmp_path), device="cuda")
    assert sess.providers == ["CPUExecutionProvider"] and sess.device is Device.CPU  # the device that runs
    assert sess.fallback is not None and "ran on cpu: onnxruntime could not start CUDAExecutionProvider" in sess.fallback
    with pytest.raises(ConfigError, match="could not start CUDAExecutionProvider"):
        create_session(_tiny(tmp_path), device="cuda", strict_device=True)


def test_session_options_and_io(tmp_path: Path) -> None:
    sess = create_session(_tiny(tmp_path), device="cpu", intra_op_threads=1)
    assert sess.input_names == ("image",)
    assert set(sess.output_names) == {"logits", "features"}
    assert sess.inputs[0].shape == (None, 1, 16, 16)
    assert sess.intra_op_threads == 1


def test_missing_output_name_is_a_clear_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"output 'probs' is not in the ONNX graph model.onnx.*\['logits', 'features'\]"):
        create_session(_tiny(tmp_path), device="cpu", required_outputs=["probs"])
    with pytest.raises(ModelError, match="input 'pixels' is not in the ONNX graph"):
        create_session(_tiny(tmp_path), device="cpu", required_inputs=["pixels"])


def test_bad_thread_count_and_non_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        create_session(_tiny(tmp_path), intra_op_threads=0)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="onnxruntime could not load"):
        create_session(junk)


def test_spinning_off_session_runs(tmp_path: Path) -> None:
    import numpy as np

    sess = create_session(_tiny(tmp_path), device="cpu", intra_op_threads=2, spinning=False)
    assert sess.spinning is False
    (logits,) = sess.run(["logits"], {"image": np.zeros((2, 1, 16, 16), np.float32)})
    assert logits.shape == (2, 3)


def test_cuda_gets_heuristic_convolution_search_and_other_providers_their_names() -> None:
    chain = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    out = with_provider_options(chain)
    assert out == ["TensorrtExecutionProvider", ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                   "CPUExecutionProvider"]
    out[1][1]["cudnn_conv_algo_search"] = "EXHAUSTIVE"  # type: ignore[index]  # a copy: the table is not touched
    assert PROVIDER_OPTIONS["CUDAExecutionProvider"]["cudnn_conv_algo_search"] == "HEURISTIC"


def test_session_hands_the_provider_options_to_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    seen: list[object] = []
    real = ort.InferenceSession

    def recording(path: str, sess_options: object = None, providers: list[object] | None = None) -> object:
        seen.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", recording)
    make_tiny_classifier(tmp_path / "m")
    OrtSession(tmp_path / "m" / "model.onnx", device=Device.CUDA, providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
               intra_op_threads=1)
    assert seen == [[("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]]
