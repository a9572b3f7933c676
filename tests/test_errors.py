"""One error base class (babo_edge.errors.BaboError) and the one CLI wrapper every command runs through."""
import importlib

import pytest

from babo_edge.errors import BaboError, run_cli

CLIS = ["babo_edge.export.to_ir", "babo_edge.runtime.run_camera", "babo_edge.runtime.benchmark", "babo_edge.train.train",
        "babo_edge.train.evaluate", "babo_edge.train.release", "babo_edge.models.report",
        "babo_edge.calibration.make_dataset"]
ERRORS = {  # module: (class, the standard base it keeps)
    "babo_edge.models.checkpoint": ("CheckpointError", ValueError),
    "babo_edge.calibration.errors": ("DatasetError", ValueError),
    "babo_edge.export.options": ("ExportError", RuntimeError),
    "babo_edge.export.quantize": ("MaskQuantizedError", RuntimeError),
    "babo_edge.export.lean_graph": ("RewriteError", ValueError),
    "babo_edge.runtime.detector": ("ModelError", ValueError),
    "babo_edge.runtime.devices": ("DeviceError", ValueError),
    "babo_edge.runtime.sources": ("SourceError", ValueError),
    "babo_edge.runtime.outputs": ("OutputError", ValueError),
    "babo_edge.runtime.latency": ("BenchmarkError", ValueError),
    "babo_edge.runtime.sparse": ("SparseError", ValueError),
    "babo_edge.ir_metadata": ("MetadataError", ValueError),
}


@pytest.mark.parametrize("module", sorted(ERRORS))
def test_every_layer_error_is_a_babo_error_and_keeps_its_base(module):
    name, base = ERRORS[module]
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, BaboError) and issubclass(error, base)


def test_babo_error_is_error_exit_2(capsys):
    @run_cli
    def main(argv=None):
        raise BaboError("the checkpoint is missing")
    assert main() == 2
    assert capsys.readouterr().err == "error: the checkpoint is missing\n"


def test_ctrl_c_is_exit_130_with_a_one_line_note(capsys):
    @run_cli(interrupted="interrupted: nothing written")
    def main(argv=None):
        raise KeyboardInterrupt
    assert main() == 130
    assert capsys.readouterr().err.strip() == "interrupted: nothing written"


def test_the_cli_keeps_its_own_exit_codes_and_other_errors_propagate(capsys):
    @run_cli(also=(OSError,))
    def main(argv=None):
        if argv == ["fail"]:
            return 1
        if argv == ["os"]:
            raise FileNotFoundError("no such file: x")
        raise TypeError("a bug")
    assert main(["fail"]) == 1
    assert main(["os"]) == 2 and capsys.readouterr().err == "error: no such file: x\n"
    with pytest.raises(TypeError):
        main([])


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_runs_through_the_wrapper(module):
    main = importlib.import_module(module).main
    assert main.__wrapped__.__module__ == module


def test_a_babo_warning_prints_as_one_line_and_the_result_is_kept(capsys):
    import warnings

    from babo_edge.errors import BaboWarning

    @run_cli
    def main(argv=None):
        warnings.warn("2 calibration images found, 300 asked for", BaboWarning, stacklevel=2)
        return 0
    assert main() == 0
    assert capsys.readouterr().err == "warning: 2 calibration images found, 300 asked for\n"
