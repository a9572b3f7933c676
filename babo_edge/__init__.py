"""babo-edge: BABO detectors from a PyTorch checkpoint to OpenVINO INT8 on CPU / iGPU / NPU.

Subpackages, one per stage, data flowing one way: `babo_edge.calibration` (datasets, no torch),
`babo_edge.models` (networks, masking, checkpoints, MAC accounting), `babo_edge.train`,
`babo_edge.export` (ONNX -> IR -> INT8) and `babo_edge.runtime` (the torch-free device runtime,
the only part of the base install). The contracts between the stages live at the top level:
`babo_edge.artifacts` (the export folder layout), `babo_edge.ir_metadata` (the IR's model_info),
`babo_edge.files` (atomic writes), `babo_edge.errors` (the one error type and the CLI wrapper).
The front door is `babo_edge.BaboModel` (`babo_edge.model`): load a checkpoint, export,
evaluate, report. It is imported on first use, so `import babo_edge` stays cheap.
"""
__version__ = "0.3.0"
__all__ = ["BaboModel"]


def __getattr__(name: str):
    if name == "BaboModel":
        from babo_edge.model import BaboModel
        return BaboModel
    raise AttributeError(f"module 'babo_edge' has no attribute {name!r}")
