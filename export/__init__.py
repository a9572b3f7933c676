"""PyTorch checkpoint -> ONNX -> OpenVINO IR (FP32 / FP16) -> NNCF INT8, each step checked.

onnx_export  ExportGraph and export_onnx (TorchScript exporter, opset 17)
openvino_ir  convert, Model API `model_info` metadata, save_ir, compile_fp32
mask_graph   the mask path and the post-processing in an OpenVINO graph, found by structure
quantize     calibration images, the ignored scope, quantize_int8 and the exact-mask check
parity       runners (PyTorch, onnxruntime, OpenVINO) and their comparison
pipeline     export_all: every artifact, stage by stage, published at once; to_ir.py is its command line
report       ExportReport (export_report.json) and its printed summary
"""
