"""Evaluation: COCO AP on known predictions, instance recall on hand-made masks, the
end-to-end evaluation of a small model and the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from babo_edge.calibration.coco import CocoDetection
from babo_edge.models.builders import ModelConfig, build_model
from babo_edge.models.checkpoint import save_checkpoint
from babo_edge.models.profiling import mac_report
from babo_edge.train import evaluate as evaluate_cli
from babo_edge.train.data import DetectionData, collate
from babo_edge.train.evaluation import (coco_detections, coco_metrics, evaluate, format_table, instance_recall,
                              recall_summary)

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 3, "name": "disc"}, {"id": 7, "name": "square"}]  # sparse ids, as in COCO
# file name, (height, width), [(category id, x, y, w, h, iscrowd)]
IMAGES = [
    ("a.jpg", (120, 160), [(3, 10, 12, 40, 40, 0), (7, 55, 15, 100, 100, 0), (7, 20, 70, 14, 16, 0)]),
    ("b.jpg", (100, 90), [(7, 5, 5, 30, 25, 0), (7, 40, 50, 45, 45, 1)]),
    ("empty.jpg", (64, 80), []),
]
CONFIG = ModelConfig(num_classes=2, input_size=(96, 96), omg_size=(48, 48), width=0.5)


def rectangle(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A three-image COCO split in val layout: rectangles as polygons, one crowd region, one
    image without objects, images of different sizes so boxes must be scaled back."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, (name, (h, w), objects) in enumerate(IMAGES, start=1):
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for category, x, y, bw, bh, _ in objects:
            image[y:y + bh, x:x + bw] = 200 if category == 3 else 120
        cv2.imwrite(str(root / "images" / "val" / name), image)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for category, x, y, bw, bh, crowd in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": crowd,
                                "segmentation": [rectangle(x, y, bw, bh)]})
    (root / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return root


@pytest.fixture(scope="module")
def coco(dataset):
    return CocoDetection(dataset / "instances_val.json", dataset / "images" / "val")


def gt_results(score=1.0):
    """The non-crowd ground truth as COCO results."""
    return [{"image_id": image_id, "category_id": c, "bbox": [x, y, w, h], "score": score}
            for image_id, (_, _, objects) in enumerate(IMAGES, start=1)
            for c, x, y, w, h, crowd in objects if not crowd]


# --- COCO AP -------------------------------------------------------------------------------

def test_ground_truth_through_the_model_input_size_scores_100(coco):
    """GT boxes at the model input size, as (K, 7) detections with labels: scaled back to
    each image's size and mapped to the sparse category ids, they are perfect."""
    batch = collate([DetectionData(coco, (96, 96), train=False)[i] for i in range(len(coco))])
    results = [result for b, labels, image_id, hw in zip(batch.boxes, batch.labels, batch.image_ids, batch.original_hw)
               for result in coco_detections(torch.cat([labels[:, None].float(), torch.ones(len(b), 1), b], 1).numpy(),
                                             image_id, hw, (96, 96), coco.category_ids)]
    assert sorted(r["category_id"] for r in results) == [3, 7, 7, 7]
    metrics = coco_metrics(coco, results)
    assert metrics["AP"] == pytest.approx(100) and metrics["AP50"] == pytest.approx(100)
    assert metrics["APs"] == pytest.approx(100) and metrics["APl"] == pytest.approx(100)


def test_shifted_box_is_a_hit_only_below_its_iou(dataset):
    """The only 'disc' box moved by 9 px: IoU 31/49 = 0.63, a hit at IoU thresholds 0.50-0.60
    only, so the disc AP is 30 and the mean over the two classes 65."""
    results = gt_results()
    results[0]["bbox"][0] += 9
    metrics = coco_metrics(dataset / "instances_val.json", results)
    assert metrics["AP"] == pytest.approx(65) and metrics["AP50"] == pytest.approx(100)
    assert metrics["AP75"] == pytest.approx(50)


def test_false_positive_on_image_without_objects_counts(dataset):
    """An image without ground truth takes part: a detection there ranked above the only disc
    halves the disc precision (AP 50, mean over the classes 75); ranked below, it costs nothing."""
    ann_file = dataset / "instances_val.json"
    low = gt_results(0.9) + [{"image_id": 3, "category_id": 3, "bbox": [1, 1, 20, 20], "score": 0.5}]
    high = gt_results(0.9) + [{"image_id": 3, "category_id": 3, "bbox": [1, 1, 20, 20], "score": 0.95}]
    assert coco_metrics(ann_file, low)["AP"] == pytest.approx(100)
    assert coco_metrics(ann_file, high)["AP"] == pytest.approx(75)


def test_no_detections_give_zero_ap_and_none_where_there_is_no_ground_truth(dataset):
    metrics = coco_metrics(dataset / "instances_val.json", [])
    assert metrics == {"AP": 0, "AP50": 0, "AP75": 0, "APs": 0, "APm": 0, "APl": 0}
    only_empty_image = coco_metrics(dataset / "instances_val.json", [], image_ids=[3])
    assert only_empty_image == dict.fromkeys(only_empty_image)  # nothing to measure: all None


def test_image_ids_restrict_the_ground_truth(dataset):
    """Evaluating image 1 only: the objects of image 2 are not missed detections."""
    results = [r for r in gt_results() if r["image_id"] == 1]
    assert coco_metrics(dataset / "instances_val.json", results, image_ids=[1])["AP"] == pytest.approx(100)
    assert coco_metrics(dataset / "instances_val.json", results)["AP"] < 100


# --- instance recall -----------------------------------------------------------------------

def test_recall_needs_more_than_half_of_the_instance():
    masks = np.zeros((3, 20, 20), np.uint8)
    masks[0, :10, :10] = 1  # 100 px
    masks[1, 10:, 10:] = 1  # 100 px
    masks[2, :10, 10:] = 1  # crowd
    predicted = np.zeros((20, 20), np.float32)
    predicted[:5, :10] = 1  # instance 0: exactly half
    predicted[10:15, 10:] = 1
    predicted[15, 10] = 1  # instance 1: 51 px
    predicted[:10, 10:] = 1  # the crowd region, fully covered
    hits, areas = instance_recall(masks, np.array([False, False, True]), predicted)
    assert hits.tolist() == [False, True] and areas.tolist() == [100, 100]


def test_predicted_mask_is_resized_to_the_image_nearest():
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, :20, :20] = 1
    masks[1, 20:, 20:] = 1
    predicted = np.zeros((20, 20), np.uint8)
    predicted[:10, :10] = 1  # the model input is half the image size
    hits, _ = instance_recall(masks, np.zeros(2, bool), predicted)
    assert hits.tolist() == [True, False]


def test_recall_summary_per_size_bucket():
    hits = np.array([True, False, True, False, True])
    areas = np.array([31 * 31, 32 * 32, 40 * 40, 96 * 96, 200 * 200])  # small, medium x2, large x2
    assert recall_summary(hits, areas) == {"overall": 0.6, "small": 1.0, "medium": 0.5, "large": 0.5}
    assert recall_summary(np.array([True]), np.array([50.0]))["large"] is None


# --- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


def test_evaluate_returns_every_figure_in_range(model, dataset):
    result = evaluate(model, dataset, input_size=(96, 96), batch_size=2, progress=False)
    assert set(result.metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0 <= v <= 100 for v in result.metrics.values())
    assert result.mask_source == "omg" and result.images == 3 and result.mac_report["images"] == 3
    dense = mac_report(model, torch.zeros(1, 3, 96, 96))
    assert result.gmac == pytest.approx(dense["totals"]["mac"] / 1e9)
    assert result.networks["omg"]["gmac"] == pytest.approx(dense["networks"]["omg"]["totals"]["mac"] / 1e9)
    assert 0 < result.gmac_star <= result.gmac
    assert result.gmac_star == pytest.approx(sum(n["gmac_star"] for n in result.networks.values()))
    assert 0 <= result.fg_ratio <= 1 and 0 < result.zero_ratio < 1
    assert set(result.instance_recall) == {"overall", "small", "medium", "large"}
    assert 0 <= result.instance_recall["overall"] <= 1
    assert not model.training


def test_gt_instance_mask_source(model, coco):
    """An external mask: the FG-ratio is the GT masks' mean and every object is recalled."""
    batch = collate([DetectionData(coco, (96, 96), train=False)[i] for i in range(len(coco))])
    result = evaluate(model, coco, input_size=(96, 96), mask_source="gt-instance", progress=False)
    assert result.fg_ratio == pytest.approx(float(batch.instance_masks.mean()))
    assert result.instance_recall == {"overall": 1.0, "small": 1.0, "medium": 1.0, "large": 1.0}
    vanilla = evaluate(model, coco, input_size=(96, 96), mask_source="none", progress=False)
    assert vanilla.fg_ratio == 1.0 and result.gmac_star < vanilla.gmac_star


def test_limit_evaluates_the_first_images_in_eval_mode(model, dataset):
    """Called from a training loop: BatchNorm in eval mode during the run, training mode after."""
    modes = []
    hook = model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    model.train()
    try:
        result = evaluate(model, dataset, input_size=(96, 96), limit=1, progress=False)
        assert model.training
    finally:
        model.eval()
        hook.remove()
    assert modes == [False]  # one forward pass, in eval mode
    assert result.images == 1 and result.mac_report["images"] == 1
    lines = format_table([("first", result), ("second", result)]).splitlines()
    assert lines[0].split()[:3] == ["model", "AP", "AP50"] and len(lines) == 4
    assert lines[3].split()[0] == "second" and lines[3].split()[-1] == f"{result.gmac_star:.3f}"


# --- CLI -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    names = [c["name"] for c in CATEGORIES]
    vanilla_config = ModelConfig(num_classes=2, input_size=(96, 96), omg=False, omg_size=None, width=0.5)
    return (save_checkpoint(folder / "babo.pt", model, CONFIG, names),
            save_checkpoint(folder / "vanilla.pt", build_model(vanilla_config), vanilla_config, names))


def test_cli_two_checkpoints_table_and_json(checkpoints, dataset, tmp_path, capsys):
    out_json = tmp_path / "out" / "eval.json"
    code = evaluate_cli.main([*map(str, checkpoints), "--data", str(dataset), "--batch-size", "2",
                              "--json", str(out_json)])
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    babo_row = next(line for line in table if line.startswith(str(checkpoints[0])))
    vanilla_row = next(line for line in table if line.startswith(str(checkpoints[1])))
    assert vanilla_row.split()[7:9] == ["-", "-"]  # no mask: no FG-ratio, no recall
    assert babo_row.split()[7] != "-"
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["checkpoint"] for r in rows] == [str(p) for p in checkpoints]
    assert [r["mask_source"] for r in rows] == ["omg", "none"]
    assert rows[1]["mac_report"]["schema"] == "babo-edge/mac-report" and set(rows[1]["networks"]) == {"od"}
    assert {r["schema"] for r in rows} == {"babo-edge/evaluation"}
    assert [p.name for p in out_json.parent.iterdir()] == ["eval.json"]  # no temporary file left


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_errors_exit_2_with_one_line(checkpoints, dataset, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    cases = {
        "no such checkpoint": [str(tmp_path / "missing.pt"), "--data", str(dataset)],
        "not a checkpoint": [str(corrupt), "--data", str(dataset)],
        "does not exist": [str(checkpoints[0]), "--data", str(tmp_path / "nowhere")],
        "instances_test.json": [str(checkpoints[0]), "--data", str(dataset), "--split", "test"],
        "unknown mask source": [str(checkpoints[0]), "--data", str(dataset), "--mask-source", "random:2"],
        "needs a model with an OMG": [str(checkpoints[1]), "--data", str(dataset), "--mask-source", "omg"],
    }
    for expected, argv in cases.items():
        assert evaluate_cli.main(argv) == 2, argv
        assert expected in one_line_error(capsys)


def test_cli_runs_as_a_script_from_the_repo_root(tmp_path):
    """`python train/evaluate.py` finds the package without installation."""
    done = subprocess.run([sys.executable, "train/evaluate.py", str(tmp_path / "missing.pt"),
                           "--data", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    last_line = done.stderr.strip().splitlines()[-1]  # (a stray runtime warning may precede it)
    assert done.returncode == 2 and last_line.startswith("error: ") and "no such checkpoint" in last_line


def test_the_facade_loads_a_checkpoint_and_evaluates_as_the_library(checkpoints, dataset, model):
    """BaboModel.load(ckpt).evaluate is evaluate() on the same weights; the checks come first."""
    from dataclasses import asdict

    from babo_edge import BaboModel
    loaded = BaboModel.load(checkpoints[0])
    assert loaded.class_names == [c["name"] for c in CATEGORIES] and loaded.config == CONFIG
    assert loaded.check_evaluation(dataset) == "omg"
    with pytest.raises(ValueError, match="needs a model with an OMG"):
        BaboModel.load(checkpoints[1]).check_evaluation(dataset, mask_source="omg")
    direct = evaluate(model, dataset, input_size=(96, 96), batch_size=2, progress=False)
    assert asdict(loaded.evaluate(dataset, batch_size=2, progress=False)) == asdict(direct)
