"""babo-edge: BABO detectors from a PyTorch checkpoint to OpenVINO INT8 on CPU / iGPU / NPU.

Subpackages, one per stage, data flowing one way: `babo_edge.calibration` (datasets, no torch),
`babo_edge.models` (networks, masking, checkpoints, MAC accounting), `babo_edge.train`,
`babo_edge.export` (ONNX -> IR -> INT8) and `babo_edge.runtime` (the torch-free device runtime,
the only part of the base install). The contracts between the stages live at the top level:
`babo_edge.artifacts` (the export folder layout), `babo_edge.ir_metadata` (the IR's model_info),
`babo_edge.files` (atomic writes), `babo_edge.errors` (the one error type and the CLI wrapper).
Nothing is imported here, so `import babo_edge` stays cheap.
"""
__version__ = "0.3.0"
