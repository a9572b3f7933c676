"""OpenVINO Model API loads our IR through the registered wrapper (runtime/model_api.py) and
detects what runtime.Detector detects."""
import cv2
import numpy as np
import openvino as ov
import pytest
from model_api.models import Model
from model_api.models.model import WrapperError

from babo_edge.ir_metadata import MASK
from babo_edge.runtime.detector import Detector
from babo_edge.runtime.model_api import BaboSSD


@pytest.fixture(scope="module")
def wrapped(xml):
    return Model.create_model(str(xml), device="CPU", configuration={"confidence_threshold": 0.05})


def test_model_api_finds_our_model_type(wrapped):
    assert isinstance(wrapped, BaboSSD)
    assert wrapped.params.resize_type == "standard" and wrapped.params.reverse_input_channels


def unmatched(theirs, ours, score_tol: float, box_tol: float) -> int:
    """Model API detections with no Detector detection of the same label, score and box (tie-ordered
    scores of an untrained model make the row order arbitrary), each matched at most once."""
    free, missing = np.ones(len(ours.boxes), bool), 0
    for box, label, score in zip(theirs.bboxes, theirs.labels, theirs.scores):
        close = (free & (ours.labels == label) & (np.abs(ours.scores - score) <= score_tol)
                 & (np.abs(ours.boxes - box).max(axis=1) <= box_tol))
        if close.any():
            free[np.flatnonzero(close)[0]] = False
        else:
            missing += 1
    return missing


@pytest.mark.parametrize("frame_wh", [None, (300, 200)], ids=["input-size", "resized"])
def test_detections_match_the_detector(wrapped, xml, frames, frame_wh):
    """At the input size: the same detections, boxes differing only by Model API's rounding to
    integer pixels. A resized frame goes through Model API's in-graph resize instead of OpenCV's:
    a few mask pixels and near-tied scores at the 100-detection cut may change, nothing more."""
    detector = Detector(xml)
    input_wh = (wrapped.w, wrapped.h)
    for frame in frames:
        frame = cv2.resize(frame, frame_wh or input_wh)
        ours, theirs = detector(frame), wrapped(frame)
        assert len(ours.boxes) == len(theirs.bboxes) > 0
        if frame_wh:
            assert unmatched(theirs, ours, 1e-2, 3.0) <= 0.05 * len(ours.boxes)
        else:
            assert unmatched(theirs, ours, 1e-5, 0.5) == 0
            assert sorted(theirs.label_names) == sorted(ours.classes[label] for label in ours.labels)


def test_an_ir_without_decoded_detections_is_refused(xml, tmp_path):
    full = ov.Core().read_model(str(xml))
    mask_only = ov.Model([full.output(MASK)], full.get_parameters(), "mask_only")
    mask_only.set_rt_info(full.get_rt_info(["model_info", "model_type"]).astype(str), ["model_info", "model_type"])
    ov.save_model(mask_only, tmp_path / "mask_only.xml")
    with pytest.raises(WrapperError, match="needs the 'detections' output"):
        Model.create_model(str(tmp_path / "mask_only.xml"), device="CPU")
