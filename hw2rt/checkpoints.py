"""Checkpoint I/O: the assignment's formats and hw2rt's own.

Read: a plain state dict saved with `torch.save` (`UNet.pt`), a dict holding `state_dict`
(`Classifier.pth`), or hw2rt's safetensors (model name and config in the metadata). Pickles
are opened with `weights_only=True` only. Write: safetensors, parameters in fp16 when asked,
buffers always fp32 (the timestep embedding's `inv_freq` loses phase in fp16).
"""
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from hw2rt.errors import Hw2rtError, first_line
from hw2rt.io import atomic_path
from hw2rt.models import MODELS, build_model, get_spec

ASSETS = Path(__file__).parent / "assets"
_SHOW = 5  # how many offending keys an error lists


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path) -> tuple[dict, dict | None]:
    """(state_dict, hw2rt metadata or None). Raises Hw2rtError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise Hw2rtError(f"{path}: checkpoint not found")
    if path.suffix == ".onnx":
        raise Hw2rtError(f"{path}: is an ONNX graph, not a checkpoint: run it with --backend ort "
                         "(e.g. `hw2rt parity --onnx`) or give the checkpoint it was exported from")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for truncated/corrupt/unsafe files
        first = first_line(exc, 160)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise Hw2rtError(f"{path}: refused: the pickle holds objects other than plain tensors "
                             f"({first})") from None
        raise Hw2rtError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise Hw2rtError(f"{path}: not a state dict "
                         "(expected a dict of tensors, or a dict with 'state_dict')")
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise Hw2rtError(f"{path}: not a state dict: its keys must be parameter names, found "
                         f"{type(bad_keys[0]).__name__} key {bad_keys[0]!r}")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, None


def _read_safetensors(path):
    try:
        sd = load_file(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise Hw2rtError(f"{path}: not a readable safetensors file: {first_line(exc, 160)}") from None
    if "hw2rt_model" not in meta:
        return sd, None
    if meta["hw2rt_model"] not in MODELS:
        raise Hw2rtError(f"{path}: its metadata names an unknown model {meta['hw2rt_model']!r} "
                         f"(known: {', '.join(MODELS)})")
    try:
        config = json.loads(meta.get("hw2rt_config", "{}"))
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise Hw2rtError(f"{path}: its hw2rt_config metadata is not a JSON object")
    return sd, {"model": meta["hw2rt_model"], "config": config}


def identify(state_dict: dict) -> str | None:
    """The registered model whose signature key the state dict holds, if exactly one."""
    found = [name for name, spec in MODELS.items() if spec.signature_key in state_dict]
    return found[0] if len(found) == 1 else None


def load_model(path, model: str | None = None) -> tuple[nn.Module, str, dict]:
    """Build the network a checkpoint holds and load it strictly. Returns (module in eval mode, name, config).

    `model` names the network the caller needs; a checkpoint of another network is an error.
    """
    path = Path(path)
    sd, meta = read_checkpoint(path)
    found = meta["model"] if meta else identify(sd)
    if model is not None and found is not None and found != model:
        raise Hw2rtError(f"{path}: holds a {found} checkpoint, but this needs a {model}")
    name = model or found
    if name is None:
        raise Hw2rtError(f"{path}: cannot tell which network this checkpoint is for "
                         f"(known: {', '.join(MODELS)})")
    spec = get_spec(name)
    if meta:
        config = {**spec.default_config, **meta["config"]}
    else:
        try:
            config = {**spec.default_config, **spec.infer_config(sd)}
        except KeyError as exc:
            raise Hw2rtError(f"{path}: not a {name} checkpoint: missing key {exc.args[0]}") from None
    try:
        net = build_model(name, config)
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as exc:
        raise Hw2rtError(f"{path}: config {json.dumps(config, sort_keys=True)} cannot build a {name}: "
                         f"{first_line(exc, 160)}") from None
    sd = {k: v for k, v in sd.items() if not k.startswith(spec.ignored_prefixes)}
    check_state_dict(net, sd, path, name)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return net.eval(), name, config


def check_state_dict(net: nn.Module, sd: dict, path, name: str):
    """One readable error listing the first missing/unexpected keys, shape mismatches, and tensors that
    must be floating point (parameters, float buffers) but are not."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and sd[k].shape != v.shape]
    dtypes = [f"{k}: {str(sd[k].dtype).removeprefix('torch.')}" for k, v in expected.items()
              if k in sd and v.is_floating_point() and not sd[k].is_floating_point()]
    if not (missing or unexpected or shapes or dtypes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch (file vs model)", shapes), ("not floating point", dtypes)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
    raise Hw2rtError(f"{path}: does not match {name}: " + "; ".join(parts))


def save_checkpoint(net: nn.Module, name: str, path, *, half: bool = True, extra_meta: dict | None = None):
    """hw2rt's own format: safetensors + {model name, config}. Parameters fp16 when `half`, buffers fp32."""
    params = {k for k, _ in net.named_parameters()}
    tensors = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and k in params and v.is_floating_point():
            v = v.half()
        tensors[k] = v
    meta = {"hw2rt_model": name, "hw2rt_config": json.dumps(getattr(net, "config", {}), sort_keys=True)}
    meta.update({k: str(v) for k, v in (extra_meta or {}).items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def bundled_checkpoint(name: str) -> Path:
    """A bundled model by name: hw2rt/assets/<name>.safetensors (see hw2rt/assets/MODEL_CARDS.md)."""
    path = ASSETS / f"{name}.safetensors"
    if not path.is_file():
        variants = sorted(p.stem for p in ASSETS.glob(f"{name}_*.safetensors"))
        if variants:
            raise Hw2rtError(f"there are {len(variants)} bundled {name} models: pass --checkpoint "
                             f"{' or '.join(variants)}")
        raise Hw2rtError(f"{path}: no bundled {name} model in this install; pass --checkpoint")
    return path


def resolve_checkpoint(path, default: str) -> Path:
    """`path` if given (a bare name such as `dann_svhn` means that bundled model), else the bundled
    `default`."""
    if path is None:
        return bundled_checkpoint(default)
    path = Path(path)
    if not path.exists() and path.parent == Path(".") and (ASSETS / f"{path.name}.safetensors").is_file():
        return ASSETS / f"{path.name}.safetensors"
    return path


def default_dann(images_dir) -> str:
    """The assignment's convention: the target domain is named in the path (svhn, else usps)."""
    return "dann_svhn" if "svhn" in str(images_dir).lower() else "dann_usps"
