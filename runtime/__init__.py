"""Device runtime, torch-free (openvino, numpy, opencv): `runtime.detector` (Detector, Result,
preprocess / postprocess), `runtime.devices` (device string checks), `runtime.sparsity` (in-graph
zero counters, the MAC* report), `runtime.sparse` (ROI / auto execution), `runtime.plots` (Fig. 5),
`runtime.model_api` (OpenVINO Model API's wrapper, the `[modelapi]` extra);
the camera app behind run_camera.py: `runtime.camera` (the pipeline, its statistics, the window,
`run`), `runtime.sources` (cameras, streams, videos, image folders), `runtime.overlay` (drawing)
and `runtime.outputs` (the atomic video, writable checks); the benchmark behind benchmark.py:
`runtime.latency` (the rows, execution modes, the crop curve), `runtime.timing` (timed calls,
interleaved rounds), `runtime.latency_table` (the reports as text) and `runtime.gate` (the
regression gate against a baseline). Nothing is imported here, so `import babo_edge.runtime` stays
cheap; import the submodule you need."""
