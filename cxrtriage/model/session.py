"""ONNX Runtime sessions: execution-provider choice, session options and graph I/O checks.

This is the only module of cxrtriage that imports onnxruntime. Everything else receives an
``OrtSession``, which runs named outputs on named inputs and knows nothing about models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from cxrtriage.cpus import affinity_cpus, usable_cpus
from cxrtriage.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


class Device(StrEnum):
    """What ``--device`` accepts."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"
    DIRECTML = "directml"
    COREML = "coreml"
    ROCM = "rocm"


# Providers that must ALL be present for a device (the first one does the work; the others are
# ORT's own fallbacks for operators the first cannot run, CPU is always appended last).
DEVICE_PROVIDERS: dict[Device, tuple[str, ...]] = {
    Device.CPU: ("CPUExecutionProvider",),
    Device.CUDA: ("CUDAExecutionProvider",),
    Device.TENSORRT: ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    Device.OPENVINO: ("OpenVINOExecutionProvider",),
    Device.DIRECTML: ("DmlExecutionProvider",),
    Device.COREML: ("CoreMLExecutionProvider",),
    Device.ROCM: ("ROCMExecutionProvider",),
}

# ``auto`` takes the first accelerator that is installed. TensorRT is left out on purpose: it
# builds an engine per input shape (minutes on first use), so it must be asked for by name.
AUTO_ORDER: tuple[Device, ...] = (Device.CUDA, Device.ROCM, Device.DIRECTML, Device.COREML, Device.OPENVINO, Device.CPU)


def parse_device(device: str | Device) -> Device:
    """Coerce a ``--device`` value, naming the valid choices when it is unknown."""
    try:
        return Device(str(device).strip().lower())
    except ValueError as exc:
        raise ConfigError(f"--device {device!r} is unknown; choose one of: {', '.join(d.value for d in Device)}") from exc


def installed_providers() -> list[str]:
    """Execution providers this onnxruntime build can use on this machine."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def available_devices(providers: Iterable[str] | None = None) -> list[Device]:
    """Devices whose providers are all installed (``cpu`` always is)."""
    have = set(installed_providers() if providers is None else providers)
    return [d for d, need in DEVICE_PROVIDERS.items() if all(p in have for p in need)]


def unavailable_reason(want: Device, usable: Iterable[Device]) -> str:
    """Why ``want`` cannot run here: the providers it needs and the devices that can."""
    return (f"device '{want.value}' is not available in this onnxruntime build "
            f"(needs {', '.join(DEVICE_PROVIDERS[want])}); available: {', '.join(d.value for d in usable)}")


def resolve_providers(
    device: str | Device = Device.AUTO,
    *,
    strict: bool = False,
    providers: Iterable[str] | None = None,
) -> tuple[Device, list[str]]:
    """Decide which execution providers to use for ``device``.

    Returns the device actually used and the provider list for ``InferenceSession`` (always
    ending with the CPU provider, which runs any operator the accelerator cannot). When the
    requested device is not available this logs a warning naming the available devices and
    falls back to CPU, or raises ``ConfigError`` (exit 4: the machine does not fit the options) when ``strict``
    is true. ``providers`` overrides what onnxruntime reports (for tests).
    """
    want = parse_device(device)
    have = list(installed_providers() if providers is None else providers)
    usable = available_devices(have)
    if want is Device.AUTO:
        chosen = next(d for d in AUTO_ORDER if d in usable)
    elif want in usable:
        chosen = want
    else:
        msg = unavailable_reason(want, usable)
        if strict:
            raise ConfigError(msg + ". Install the matching onnxruntime package, choose an available --device, or leave "
                              "out --strict-device to run on the CPU")
        log.warning("%s; falling back to cpu", msg)
        chosen = Device.CPU
    chain = [p for p in DEVICE_PROVIDERS[chosen] if p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
    return chosen, chain


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Name, shape (None for a symbolic dimension) and element type of a graph input or output."""

    name: str
    shape: tuple[int | None, ...]
    type: str


def _info(arg: object) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in getattr(arg, "shape", ()) or ())
    return TensorInfo(name=str(getattr(arg, "name", "")), shape=shape, type=str(getattr(arg, "type", "")))


# Options per execution provider. cuDNN's EXHAUSTIVE convolution search (ORT's default) runs again for every new
# input shape, and a predict run meets two (full batches, the last partial one): on an H100 a new session's first
# batch of 32 took 431 ms (EXHAUSTIVE) vs 292 ms (HEURISTIC) and the next shape (5 images) 134 vs 27 ms, while
# steady batches ran the same (1.40 vs 1.45 ms; DEFAULT: 3.19 ms). benchmarks/bench_gpu_session.py measures it.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"}}


def with_provider_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """``providers`` as InferenceSession takes them, each with its options from PROVIDER_OPTIONS."""
    return [(p, dict(PROVIDER_OPTIONS[p])) if p in PROVIDER_OPTIONS else p for p in providers]


class OrtSession:
    """A loaded ONNX graph on one device. ``run`` is thread-safe (as ``InferenceSession.run`` is)."""

    def __init__(
        self,
        path: Path,
        *,
        device: Device,
        providers: list[str],
        intra_op_threads: int | None,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are not the user's business
        if intra_op_threads is None and (usable := usable_cpus()) < affinity_cpus():
            # A CPU quota (a container's limit) below the CPUs onnxruntime sees: its default of one thread per
            # core would run more threads than the quota's time allows, and the kernel throttles them all.
            intra_op_threads = usable
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = 1
        if not spinning:
            # Idle ORT threads busy-wait by default; with decode processes sharing the cores that
            # spinning steals the CPU the decoders need.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=with_provider_options(providers))
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelError(
                f"{path}: onnxruntime could not load this model ({type(exc).__name__}: {str(exc).strip()[:300]}); "
                "re-export it or check that it is a valid ONNX file"
            ) from exc
        self.path = path
        self.device = device
        # Set by ``create_session`` when the model runs on another device than the one asked for: what was asked
        # for, what runs, and why (run.json's notes record it)
        self.fallback: str | None = None
        self.intra_op_threads = intra_op_threads
        self.spinning = spinning
        self.inputs = tuple(_info(i) for i in self._sess.get_inputs())
        self.outputs = tuple(_info(o) for o in self._sess.get_outputs())

    @property
    def providers(self) -> list[str]:
        """Providers the session really uses (ORT may drop one that failed to initialise)."""
        return list(self._sess.get_providers())

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def check_names(self, *, inputs: Iterable[str] = (), outputs: Iterable[str] = (), where: str = "manifest") -> None:
        """Raise ``ModelError`` when a name the manifest relies on is not in the graph."""
        for kind, wanted, have in (("input", inputs, self.input_names), ("output", outputs, self.output_names)):
            for name in wanted:
                if name not in have:
                    raise ModelError(
                        f"{where}: {kind} '{name}' is not in the ONNX graph {self.path.name}, whose {kind}s are "
                        f"{list(have)}; fix the manifest's names or re-export the model"
                    )

    def run(self, output_names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph; returns the outputs in the order of ``output_names``."""
        try:
            return [np.asarray(o) for o in self._sess.run(list(output_names), dict(feeds))]
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            raise ModelError(
                f"{self.path}: inference failed for inputs {shapes} ({type(exc).__name__}: {str(exc).strip()[:300]})"
            ) from exc


def running_device(providers: Sequence[str]) -> Device:
    """The device whose provider does the work in a session's provider list (its first)."""
    first = providers[0] if providers else "CPUExecutionProvider"
    return next((d for d, need in DEVICE_PROVIDERS.items() if need[0] == first), Device.CPU)


def create_session(
    path: str | Path,
    *,
    device: str | Device = Device.AUTO,
    strict_device: bool = False,
    intra_op_threads: int | None = None,
    spinning: bool = True,
    required_inputs: Iterable[str] = (),
    required_outputs: Iterable[str] = (),
    where: str = "manifest",
) -> OrtSession:
    """Open ``path`` in onnxruntime with graph optimisation on, and check the I/O names.

    ``intra_op_threads`` None lets onnxruntime use one thread per physical core. ``spinning=False``
    stops idle onnxruntime threads from busy-waiting (use it when other processes share the cores).
    """
    p = Path(path)
    if intra_op_threads is not None and intra_op_threads < 1:
        raise ConfigError(f"intra-op threads must be >= 1, got {intra_op_threads}")
    if not p.is_file():
        raise ModelError(f"{p}: ONNX file not found")
    want = parse_device(device)
    chosen, providers = resolve_providers(want, strict=strict_device)
    sess = OrtSession(p, device=chosen, providers=providers, intra_op_threads=intra_op_threads, spinning=spinning)
    why = unavailable_reason(want, available_devices()) if want not in (Device.AUTO, chosen) else None
    primary = providers[0]
    if primary not in sess.providers:  # ORT drops a provider whose libraries fail to load, with no error
        msg = f"{p}: onnxruntime could not start {primary} (missing driver or libraries?); running on {sess.providers}"
        if strict_device:
            raise ConfigError(msg + ". Fix the accelerator installation or choose another --device.")
        log.warning(msg)
        sess.device = running_device(sess.providers)
        why = f"onnxruntime could not start {primary} (missing driver or libraries?)"
    if why is not None:
        sess.fallback = (f"--device {want.value} was asked for, but the model ran on {sess.device.value}: {why} "
                         "(--strict-device stops instead)")
    log.info("loaded %s on %s (providers %s)", p.name, chosen.value, ", ".join(sess.providers))
    sess.check_names(inputs=required_inputs, outputs=required_outputs, where=where)
    return sess
