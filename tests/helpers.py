"""Small seeded networks the export and engine tests share (the `exported` fixture builds on them)."""
import torch

from hw2rt.models import build_model

SMALL = {"face_unet": {"base": 32}, "digit_unet": {"n_feat": 16}, "dann": {}, "digit_classifier": {}}
DIMS = {"face_unet": {"height": 32, "width": 32}}


def small_net(model, seed=0):
    torch.manual_seed(seed)
    return build_model(model, SMALL[model]).eval()
