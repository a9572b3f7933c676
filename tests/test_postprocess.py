"""Decode + class-aware NMS + top-k: eager semantics and ONNX export parity."""
import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from torch import nn

from babo_edge.models.anchors import BoxCoder
from babo_edge.models.postprocess import PostprocessConfig, box_iou, detect, split_by_image

CODER = BoxCoder()


def reference_nms(boxes, scores, labels, iou_thr, score_thr, max_det):
    """Plain greedy per-class NMS written independently (loops over python lists)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if scores[i] <= score_thr:
            continue
        if all(labels[j] != labels[i] or box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= iou_thr
               for j in kept):
            kept.append(i)
    return kept[:max_det]


def logits_for(probs):
    """SSD softmax logits (background last) reproducing the given foreground probabilities."""
    bg = 1 - probs.sum(-1, keepdim=True)
    return torch.log(torch.cat([probs, bg], dim=-1).clamp_min(1e-9))


def reference_pairs(deltas, anchors, probs, size):
    """Every (anchor, class) pair of one image, anchor-major: decoded boxes clipped to a square
    image of `size`, scores and labels."""
    classes = probs.shape[-1]
    boxes = CODER.decode(deltas[0], anchors).clamp(0, size).repeat_interleave(classes, dim=0)
    return boxes, probs[0].reshape(-1), torch.arange(classes).repeat(len(anchors))


def assert_detections_are(dets, kept, boxes, scores, labels):
    assert dets.shape == (len(kept), 7)
    assert torch.allclose(dets[:, 2], scores[kept], atol=1e-6)
    assert torch.equal(dets[:, 1].long(), labels[kept])
    assert torch.allclose(dets[:, 3:], boxes[kept], atol=1e-4)


def test_class_aware_nms_matches_reference():
    g = torch.Generator().manual_seed(0)
    a = 60
    centres = torch.rand(a, 2, generator=g) * 80 + 10
    anchors = torch.cat([centres - 12, centres + 12], dim=1)
    probs = torch.rand(1, a, 3, generator=g) * 0.3
    deltas = torch.randn(1, a, 4, generator=g) * 0.5
    cfg = PostprocessConfig(score_threshold=0.1, iou_threshold=0.45, pre_nms_top_k=500, max_detections=40)
    dets = detect(logits_for(probs), deltas, anchors, (100, 100), CODER, "softmax", cfg)
    boxes, scores, labels = reference_pairs(deltas, anchors, probs, 100)
    kept = reference_nms(boxes, scores.tolist(), labels.tolist(), 0.45, 0.1, 40)
    assert_detections_are(dets, kept, boxes, scores, labels)


def test_overlapping_boxes_of_other_classes_survive_and_top_k_caps():
    anchors = torch.tensor([[10.0, 10, 50, 50]] * 3)
    probs = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]]])  # 0 and 1 overlap, same class
    dets = detect(logits_for(probs), torch.zeros(1, 3, 4), anchors, (64, 64), CODER, "softmax",
                  PostprocessConfig(score_threshold=0.05))
    assert dets[:, 1].tolist() == [0, 1]
    assert dets[:, 2].tolist() == pytest.approx([0.9, 0.7], abs=1e-5)
    capped = detect(logits_for(probs), torch.zeros(1, 3, 4), anchors, (64, 64), CODER, "softmax",
                    PostprocessConfig(score_threshold=0.05, max_detections=1))
    assert capped.shape[0] == 1 and capped[0, 2] == pytest.approx(0.9, abs=1e-5)


def test_pre_nms_top_k_keeps_only_the_best_pairs_when_more_pass_the_threshold():
    g = torch.Generator().manual_seed(2)
    a = 80
    centres = torch.rand(a, 2, generator=g) * 60 + 20
    anchors = torch.cat([centres - 10, centres + 10], dim=1)
    probs = torch.rand(1, a, 2, generator=g) * 0.45
    deltas = torch.randn(1, a, 4, generator=g) * 0.2
    boxes, scores, labels = reference_pairs(deltas, anchors, probs, 100)
    assert int((scores > 0.05).sum()) > 30  # the cap below is active
    for k in (30, 1000):
        dets = detect(logits_for(probs), deltas, anchors, (100, 100), CODER, "softmax",
                      PostprocessConfig(score_threshold=0.05, pre_nms_top_k=k, max_detections=100))
        best = scores.argsort(descending=True)[:k]
        kept = best[reference_nms(boxes[best], scores[best].tolist(), labels[best].tolist(), 0.45, 0.05, 100)]
        assert_detections_are(dets, kept, boxes, scores, labels)
    assert len(kept) > 30  # without the cap more survive


def test_batch_is_split_per_image():
    anchors = torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90]])
    probs = torch.tensor([[[0.9], [0.0]], [[0.0], [0.6]]])
    dets = detect(torch.logit(probs), torch.zeros(2, 2, 4), anchors, (100, 100), CODER, "sigmoid",
                  PostprocessConfig(score_threshold=0.3))
    per_image = split_by_image(dets, 2)
    assert [len(d["scores"]) for d in per_image] == [1, 1]
    assert torch.allclose(per_image[1]["boxes"], anchors[1:])


class PostprocessGraph(nn.Module):
    def __init__(self, anchors, cfg):
        super().__init__()
        self.register_buffer("anchors", anchors)
        self.cfg = cfg

    def forward(self, cls_logits, box_deltas):
        return detect(cls_logits, box_deltas, self.anchors, (128, 128), CODER, "softmax", self.cfg)


@pytest.mark.parametrize("top_k", [300, 20])  # 20: the top-k branch of the graph's If runs
def test_onnx_export_matches_eager(tmp_path, top_k):
    g = torch.Generator().manual_seed(1)
    a = 200
    centres = torch.rand(a, 2, generator=g) * 110 + 9
    anchors = torch.cat([centres - 16, centres + 16], dim=1)
    cls = torch.randn(2, a, 5, generator=g) * 2
    box = torch.randn(2, a, 4, generator=g) * 0.3
    graph = PostprocessGraph(anchors, PostprocessConfig(score_threshold=0.2, pre_nms_top_k=top_k,
                                                        max_detections=25)).eval()
    path = tmp_path / "post.onnx"
    torch.onnx.export(graph, (cls, box), str(path), dynamo=False, opset_version=17,
                      input_names=["cls", "box"], output_names=["detections"],
                      dynamic_axes={"cls": {0: "n"}, "box": {0: "n"}})
    assert "If" in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (cls, cls[:1]):
        n = batch.shape[0]
        eager = graph(batch, box[:n]).numpy()
        assert (torch.softmax(batch, -1)[..., :-1] > 0.2).flatten(1).sum(1).max() > 20
        (onnx_out,) = session.run(None, {"cls": batch.numpy(), "box": box[:n].numpy()})
        openvino_out = compiled({"cls": batch.numpy(), "box": box[:n].numpy()})[0]
        for out in (onnx_out, openvino_out):
            assert out.shape == eager.shape and eager.shape[0] > 0
            np.testing.assert_allclose(out, eager, atol=1e-4)
