"""int8 calibration data from the model's own use, recorded through the engine interface.

A `Recorder` wraps an engine (the fp32 reference) and keeps the feeds of every k-th call while a job's
own loop runs, so the activations the quantizer sees are the ones sampling produces:

- digit_unet: the guided DDIM loop the gate and the demo run (50 steps, eta 1, w 2), both halves of
  the guidance batch in every call, every class, two seeds the gate does not use;
- face_unet: Problem 2's DDIM loop (50 steps, eta 0) on seeded noise at 64x64;
- dann / digit_classifier: images of the target domain (a folder, read by the classify job's decoder).

The recipe (`calibration_recipe`) is what goes into the graph's metadata and the cache key.
"""
import hashlib

import torch

from hw2rt.engines.base import Engine
from hw2rt.errors import Hw2rtError
from hw2rt.runtime import jobs

RECIPES = {
    "digit_unet": {"loop": "digit-ddim", "steps": 50, "eta": 1.0, "w": 2.0, "per_digit": 2,
                   "seeds": [1001, 2002], "every": 5},
    "face_unet": {"loop": "face-ddim", "steps": 50, "eta": 0.0, "images": 4, "size": 64, "seed": 1001,
                  "every": 5},
    "dann": {"images": 512, "batch": 64},
    "digit_classifier": {"images": 512, "batch": 64},
}


class Recorder(Engine):
    """An engine that forwards every call to `engine` and keeps a CPU copy of the feeds of every
    `every`-th call."""

    def __init__(self, engine: Engine, every: int = 1):
        super().__init__(engine.model, engine.inputs, engine.outputs, device=engine.device,
                         precision=engine.precision, max_batch=engine.max_batch, source=engine.source)
        self.backend = f"recording {engine.backend}"
        self.engine, self.every = engine, every
        self.feeds, self.calls = [], 0

    def _run(self, feeds):
        if self.calls % self.every == 0:
            self.feeds.append({k: v.detach().to("cpu", copy=True) for k, v in feeds.items()})
        self.calls += 1
        return self.engine.run(feeds)


def _folder_images(images_dir, n: int):
    from hw2rt.data.images import read_images
    from hw2rt.io import list_images

    images, _ = read_images(list_images(images_dir)[:n], 28)
    return images


def calibration_recipe(model: str, images_dir=None) -> dict:
    """What `record_calibration` will run for `model`: RECIPES[model], and for the classifiers the
    folder and a hash of the images it takes (so the cache key changes with the data)."""
    recipe = dict(RECIPES[model])
    if model in ("dann", "digit_classifier"):
        if images_dir is None:
            raise Hw2rtError(f"int8 {model}: calibration needs images of the target domain (a folder)")
        images = _folder_images(images_dir, recipe["images"])
        recipe.update({"images": len(images), "folder": str(images_dir),
                       "sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest()})
    return recipe


def record_calibration(engine, recipe: dict) -> list:
    """The calibration batches of `recipe` (see `calibration_recipe`), recorded on `engine`."""
    model = engine.model
    if model == "digit_unet":
        rec = Recorder(engine, recipe["every"])
        plan = jobs.digit_plan(recipe["loop"].removeprefix("digit-"), recipe["steps"], eta=recipe["eta"],
                               w=recipe["w"])
        labels = torch.arange(10).repeat_interleave(recipe["per_digit"])
        for seed in recipe["seeds"]:
            jobs.sample_digits(rec, labels, plan, seed=seed, batch_size=len(labels), progress=False)
        return rec.feeds
    if model == "face_unet":
        rec = Recorder(engine, recipe["every"])
        g = torch.Generator().manual_seed(recipe["seed"])
        x = torch.randn(recipe["images"], 3, recipe["size"], recipe["size"], generator=g)
        jobs.sample_faces(rec, x, steps=recipe["steps"], eta=recipe["eta"], batch_size=len(x), progress=False)
        return rec.feeds
    x = _folder_images(recipe["folder"], recipe["images"]).float() / 255.0  # as the classify job feeds them
    # batches of one size (ONNX Runtime's histogram calibrators stack them: a shorter last batch crashed it)
    batch = max(d for d in range(1, recipe["batch"] + 1) if len(x) % d == 0)
    return [{"x": x[i:i + batch]} for i in range(0, len(x), batch)]
