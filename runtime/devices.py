"""OpenVINO device strings checked against this machine before anything is compiled.

OpenVINO reports a wrong or absent device from deep inside `compile_model`, with a C++ trace and
without saying what the machine has; here every concrete device a string names (also inside
AUTO / HETERO / MULTI / BATCH lists) is checked first, and the error lists the available ones.
Torch-free: only the standard library (the `core` and `model` arguments are OpenVINO objects).
"""
from __future__ import annotations

import re

from babo_edge.errors import BaboError

VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
REMOVED_DEVICES = ("MYRIAD", "HDDL")
NCS2_README = 'README.md, section "Neural Compute Stick 2 (MYRIAD)"'


class DeviceError(BaboError, ValueError):
    """A device string this machine cannot compile for."""


def resolve_device(name: str, core) -> str:
    """`name` normalised (upper case, no spaces), once every device it names is in
    `core.available_devices` ("GPU" matches "GPU.0" and "GPU.1"; "GPU.0" matches a lone "GPU")."""
    device = name.strip().upper().replace(" ", "")
    available = list(core.available_devices)
    named = named_devices(device)
    if any(device_type(d) in REMOVED_DEVICES for d in named):
        raise DeviceError(removed_device_message(name, available))
    missing = [d for d in named if not is_available(d, available)]
    if missing:
        raise DeviceError(f"no {', '.join(missing)} on this machine (device {name!r}); "
                          f"available: {', '.join(available) or 'none'}")
    return device


def named_devices(device: str) -> list[str]:
    """The concrete devices a normalised device string asks for: 'AUTO:GPU.1,-CPU' -> ['GPU.1'],
    'BATCH:GPU(4)' -> ['GPU'], 'CPU' -> ['CPU'], bare 'AUTO' -> [] (it picks from what exists).
    Excluded devices ('-CPU') are not asked for, so they need not exist."""
    kind, _, listed = device.partition(":")
    if kind not in VIRTUAL_DEVICES:
        return [device]
    if not listed and kind != "AUTO":
        raise DeviceError(f"{kind} needs a list of devices, e.g. {kind}:GPU,CPU")
    items = [re.sub(r"\(\d+\)$", "", item) for item in listed.split(",") if item]
    return [item for item in items if not item.startswith("-")]


def device_type(device: str) -> str:
    """'GPU.1' -> 'GPU'."""
    return device.partition(".")[0]


def is_available(device: str, available: list[str]) -> bool:
    """OpenVINO lists a lone GPU as 'GPU' and several as 'GPU.0', 'GPU.1': 'GPU' asks for any of
    them, 'GPU.0' is also the lone 'GPU'."""
    kind, dot, index = device.partition(".")
    return (device in available
            or (not dot and any(device_type(a) == kind for a in available))
            or (index == "0" and kind in available))


def removed_device_message(name: str, available: list[str]) -> str:
    alternative = ("NPU (Intel's current VPU, on this machine)" if is_available("NPU", available)
                   else f"AUTO (this machine has no NPU; available: {', '.join(available) or 'none'})")
    return (f"device {name!r}: the Movidius MYRIAD/HDDL plugins were removed in OpenVINO 2023.0 and were "
            f"never in the pip wheel; use {alternative}, or for a Neural Compute Stick 2 see "
            f"{NCS2_README} (FP16 IR + OpenVINO 2022.3 LTS)")


def check_static_for_npu(model, device: str) -> None:
    """The NPU compiles static shapes only: a dynamic input (e.g. an IR exported with
    --dynamic-batch) is refused here rather than by a long plugin trace from compile_model.
    `model`: an openvino.Model; `device`: a string `resolve_device` accepted."""
    if not any(device_type(d) == "NPU" for d in named_devices(device.upper())):
        return
    dynamic = [f"{port.get_any_name()} {port.get_partial_shape()}" for port in model.inputs
               if port.get_partial_shape().is_dynamic]
    if dynamic:
        raise DeviceError(f"{device} needs static input shapes, but {', '.join(dynamic)} is dynamic; "
                          f"re-export with a static batch (export/to_ir.py without --dynamic-batch)")
