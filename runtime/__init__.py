"""Device runtime, torch-free (openvino, numpy, opencv): `runtime.detector` (Detector, Result,
preprocess / postprocess), `runtime.devices` (device string checks), `runtime.sparsity` (in-graph zero counters, the MAC* report),
`runtime.plots` (Fig. 5), `runtime.camera` and `runtime.latency` (the camera app and the
benchmark behind run_camera.py and benchmark.py). Nothing is imported here, so `import babo_edge.runtime`
stays cheap; import the submodule you need."""
