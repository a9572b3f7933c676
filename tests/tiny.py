"""The tiny BABO model the export and runtime tests share: its config, class names, the OMG
balancing and the FP32 IR export. conftest.py builds the model and its IR once per session."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from babo_edge.export import openvino_ir
from babo_edge.export.onnx_export import export_onnx
from babo_edge.models.builders import ModelConfig

CONFIG = ModelConfig(num_classes=3, input_size=(128, 128), omg_size=(64, 64), width=0.5)
CLASS_NAMES = ["red disc", "square", "triangle"]
CHECKPOINT_NAMES = ["disc", "square", "star"]  # those of conftest's `saved` checkpoint
VIDEO_SIZE = (240, 176)  # width, height of conftest's `video100` clip
FP32 = {"INFERENCE_PRECISION_HINT": "f32"}  # parity with PyTorch needs no bf16 shortcuts


def balanced_omg(model, images):
    """Shifts the OMG's foreground bias so about half the pixels of `images` are foreground (a
    random OMG keeps almost everything, or almost nothing with a zero bias), with the decision
    threshold in the widest gap between the pixels' logit differences: a threshold on a pixel
    would make exact ties, which runtimes may break either way."""
    with torch.no_grad():
        model.omg.classifier[-1].bias.zero_()
        logits = model(torch.from_numpy(np.concatenate(images))).omg_logits
        margins = np.sort((logits[:, 1] - logits[:, 0]).flatten().numpy())
        middle = margins[int(0.3 * margins.size):int(0.7 * margins.size)]
        widest = int(np.argmax(np.diff(middle)))
        model.omg.classifier[-1].bias[1] = -float(middle[widest] + middle[widest + 1]) / 2
    return model


def build_ir(model, out: Path, config: ModelConfig = CONFIG, dynamic_batch: bool = False) -> SimpleNamespace:
    """`model` exported as export/to_ir.py lays it out: out/model.onnx, then the FP32 IR with its
    model_info at out/FP32/model.xml. Returns the ONNX path, the converted ov.Model (in memory),
    the IR's xml and its metadata."""
    onnx_path = export_onnx(model, config.input_size, out / "model.onnx", dynamic_batch=dynamic_batch)
    ov_model = openvino_ir.convert(onnx_path)
    info = openvino_ir.model_info(model, config, CLASS_NAMES, ov_model)
    openvino_ir.set_model_info(ov_model, info)
    xml = openvino_ir.save_ir(ov_model, out / "FP32" / "model.xml", "fp32")
    return SimpleNamespace(onnx_path=onnx_path, ov_model=ov_model, xml=xml, info=info)


def export_ir(model, out: Path, config: ModelConfig = CONFIG, dynamic_batch: bool = False) -> Path:
    """The xml of `build_ir`."""
    return build_ir(model, out, config, dynamic_batch).xml
