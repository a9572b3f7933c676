"""babo-edge: BABO detectors from a PyTorch checkpoint to OpenVINO INT8 on CPU / iGPU / NPU.

Subpackages, one per stage, data flowing one way: `babo_edge.calibration` (datasets, no torch),
`babo_edge.models` (networks, masking, checkpoints, MAC accounting), `babo_edge.train`,
`babo_edge.export` (ONNX -> IR -> INT8) and `babo_edge.runtime` (the torch-free device runtime,
the only part of the base install). Nothing is imported here, so `import babo_edge` stays cheap.
"""
__version__ = "0.3.0"
