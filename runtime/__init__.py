"""Device runtime, torch-free (openvino, numpy, opencv): `runtime.detector` (Detector, Result,
preprocess / postprocess), `runtime.devices` (device string checks). Nothing is imported here,
so `import runtime` stays cheap; import the submodule you need."""
