"""The one place each network's contract lives: name -> builder, config, I/O spec, example inputs.

Export, engines, parity and bench read a `ModelSpec`; nothing else restates input names,
dtypes or dynamic axes. Dynamic dimensions are named strings ("batch", "height", "width").
"""
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from hw2rt import options
from hw2rt.errors import Hw2rtError
from hw2rt.models.dann import DANNClassifier
from hw2rt.models.digit_classifier import DigitClassifier
from hw2rt.models.digit_unet import DigitUNet
from hw2rt.models.face_unet import FaceUNet


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple  # ints, or names of dynamic axes

    def concrete_shape(self, dims: dict) -> tuple:
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    default_config: dict
    inputs: tuple
    outputs: tuple
    default_dims: dict  # values for the dynamic axes other than batch, used for examples
    signature_key: str  # a state-dict key only this model has: identifies plain checkpoints
    infer_config: Callable[[dict], dict]
    make_example: Callable[..., dict] = field(repr=False)
    # The largest batch one engine call serves on a GPU (a bigger request is split): sized for the
    # assignment's jobs (`call_batches`). It is the TensorRT profile's maximum and the top CUDA-graph bucket.
    max_batch: int = 1024
    # The batches the assignment's jobs call the network with (runtime/jobs.py): open_engine adds them to the
    # CUDA-graph buckets and tunes the TensorRT profile for the largest, so a job's call is never padded.
    call_batches: tuple = ()
    # Images per chunk of the model's sampler job, per device type: the job's default --batch-size.
    job_batch: dict = field(default_factory=dict)
    ignored_prefixes: tuple = ()  # state-dict entries a full training checkpoint may carry beyond this module
    # Named axes the network needs to be positive multiples of a number (the face UNet halves H and W five
    # times); every other named axis must be positive.
    dim_multiple: dict = field(default_factory=dict)

    def check_dims(self, dims: dict, where: str) -> None:
        """One-line Hw2rtError when a size of a named axis cannot be served."""
        for axis, n in dims.items():
            k = self.dim_multiple.get(axis, 1)
            if n < 1 or n % k:
                need = f"a positive multiple of {k}" if k > 1 else "positive"
                raise Hw2rtError(f"{where}: {axis} {n} cannot be served: the {self.name} needs it {need}")

    def job_batch_size(self, device) -> int:
        """Images per chunk of this model's job on `device` (a torch.device or its name)."""
        kind = torch.device(device).type
        if kind not in self.job_batch:
            raise Hw2rtError(f"{self.name} has no job batch size for device {kind}")
        return self.job_batch[kind]

    def example_inputs(self, batch: int = 2, seed: int = 0, **dims) -> dict:
        """Seeded inputs in the model's domain (the same on every call with the same arguments)."""
        g = torch.Generator().manual_seed(seed)
        return self.make_example(batch, g, {**self.default_dims, **dims})


def _face_example(b, g, dims):
    return {
        "x": torch.randn(b, 3, dims["height"], dims["width"], generator=g),
        "t": torch.randint(1, 1000, (b,), generator=g, dtype=torch.int64),
    }


def _digit_unet_example(b, g, dims):
    return {
        "x": torch.randn(b, 3, 28, 28, generator=g),
        "c": torch.randint(0, 10, (b,), generator=g, dtype=torch.int64),
        "t": torch.rand(b, generator=g),
        "mask": (torch.arange(b) % 2).float(),  # both conditional and dropped rows
    }


def _image_example(b, g, dims):
    return {"x": torch.rand(b, 3, 28, 28, generator=g)}


def _face_config(sd):
    return {"base": int(sd["down1.weight"].shape[0]), "norm_groups": 32}


def _digit_unet_config(sd):
    w = sd["contextembed1.layers.0.weight"]
    return {"n_feat": int(sd["init_conv.conv1.0.weight"].shape[0]), "n_classes": int(w.shape[1]),
            "in_channels": int(sd["init_conv.conv1.0.weight"].shape[1])}


_IMAGE = TensorSpec("x", torch.float32, ("batch", 3, 28, 28))

# The digit job's images per sampler chunk (its default --batch-size; every image draws from its own
# generator, so the files are the same whatever the chunk). CPU: 250, the ddpm command's default since its
# first CPU measurements (a call of 500 rows already keeps the cores busy). CUDA: all 1,000 digits in one
# chunk, one call of 2,000 rows per step (guidance doubles it): a quarter of the launches and replays of
# 250-image chunks, and the batch a GPU needs to fill its SMs; the bench samples the job the same way.
DIGIT_JOB_BATCH = {"cpu": 250, "cuda": 1000}
GUIDED_ROWS = 2  # rows per image in a digit UNet call: [cond; uncond]
FACE_CALLS = (10, 11)  # the face job's batch of 10 faces; the interpolation's row of 11
CLASSIFY_CALLS = (512,)  # classify's batch

MODELS = {
    "face_unet": ModelSpec(
        name="face_unet",
        build=FaceUNet,
        default_config={"base": 128, "norm_groups": 32},
        inputs=(TensorSpec("x", torch.float32, ("batch", 3, "height", "width")),
                TensorSpec("t", torch.int64, ("batch",))),
        outputs=(TensorSpec("eps", torch.float32, ("batch", 3, "height", "width")),),
        default_dims={"height": 64, "width": 64},
        dim_multiple={"height": 32, "width": 32},
        signature_key="mid1.resblocks.conv1.weight",
        infer_config=_face_config,
        make_example=_face_example,
        max_batch=16,
        call_batches=FACE_CALLS,
    ),
    "digit_unet": ModelSpec(
        name="digit_unet",
        build=DigitUNet,
        default_config={"n_feat": 128, "n_classes": 10, "in_channels": 3},
        inputs=(
            TensorSpec("x", torch.float32, ("batch", 3, 28, 28)),
            TensorSpec("c", torch.int64, ("batch",)),
            TensorSpec("t", torch.float32, ("batch",)),
            TensorSpec("mask", torch.float32, ("batch",)),
        ),
        outputs=(TensorSpec("eps", torch.float32, ("batch", 3, 28, 28)),),
        default_dims={},
        signature_key="contextembed1.layers.0.weight",
        infer_config=_digit_unet_config,
        make_example=_digit_unet_example,
        max_batch=GUIDED_ROWS * DIGIT_JOB_BATCH["cuda"],
        call_batches=tuple(GUIDED_ROWS * n for n in DIGIT_JOB_BATCH.values()),
        job_batch=DIGIT_JOB_BATCH,
    ),
    "dann": ModelSpec(
        name="dann",
        build=DANNClassifier,
        default_config={},
        inputs=(_IMAGE,),
        outputs=(TensorSpec("log_probs", torch.float32, ("batch", 10)),
                 TensorSpec("features", torch.float32, ("batch", 512))),
        default_dims={},
        signature_key="label_classifier.layers.0.weight",
        infer_config=lambda sd: {},
        make_example=_image_example,
        call_batches=CLASSIFY_CALLS,
        ignored_prefixes=("domain_classifier.",),
    ),
    "digit_classifier": ModelSpec(
        name="digit_classifier",
        build=DigitClassifier,
        default_config={},
        inputs=(_IMAGE,),
        outputs=(TensorSpec("logits", torch.float32, ("batch", 10)),),
        default_dims={},
        signature_key="fc3.weight",
        infer_config=lambda sd: {},
        make_example=_image_example,
        call_batches=CLASSIFY_CALLS,
    ),
}


assert tuple(MODELS) == options.MODELS, "hw2rt.options.MODELS names the registered models"


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise Hw2rtError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def build_model(name: str, config: dict | None = None) -> nn.Module:
    spec = get_spec(name)
    return spec.build(**{**spec.default_config, **(config or {})})
