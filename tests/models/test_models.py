"""The four networks: exact assignment layouts, output shapes, strict round trips."""
import pytest
import torch

from hw2rt.checkpoints import load_model, read_checkpoint, save_checkpoint
from hw2rt.models import MODELS, build_model, get_spec
from hw2rt.models.dann import DANN, grad_reverse, grl_lambda
from hw2rt.models.face_unet import FaceUNet


def face_unet_layout_from_spec():
    """The UNet.pt state-dict layout, built from HW2_SPEC.md's layer table (not from FaceUNet)."""
    keys = {"time.0.inv_freq": (64,), "time.1.weight": (512, 128), "time.1.bias": (512,),
            "time.3.weight": (512, 512), "time.3.bias": (512,),
            "down1.weight": (128, 3, 3, 3), "down1.bias": (128,),
            "out.0.weight": (128,), "out.0.bias": (128,), "out.2.weight": (3, 128, 3, 3), "out.2.bias": (3,)}

    def rb(name, i, o, attn=False):
        p = f"{name}.resblocks."
        keys.update({p + "norm1.weight": (i,), p + "norm1.bias": (i,), p + "conv1.weight": (o, i, 3, 3),
                     p + "conv1.bias": (o,), p + "time.1.weight": (o, 512), p + "time.1.bias": (o,),
                     p + "norm2.weight": (o,), p + "norm2.bias": (o,), p + "conv2.weight": (o, o, 3, 3),
                     p + "conv2.bias": (o,)})
        if i != o:
            keys.update({p + "skip.weight": (o, i, 1, 1), p + "skip.bias": (o,)})
        if attn:
            a = f"{name}.attention."
            keys.update({a + "norm.weight": (o,), a + "norm.bias": (o,), a + "qkv.weight": (3 * o, o, 1, 1),
                         a + "qkv.bias": (3 * o,), a + "out.weight": (o, o, 1, 1), a + "out.bias": (o,)})

    def ds(name, c):
        keys.update({f"{name}.0.weight": (c, c, 3, 3), f"{name}.0.bias": (c,)})

    def us(name, c):
        keys.update({f"{name}.1.weight": (c, c, 3, 3), f"{name}.1.bias": (c,)})

    rb("down2", 128, 128); rb("down3", 128, 128); ds("down4", 128)
    rb("down5", 128, 128); rb("down6", 128, 128); ds("down7", 128)
    rb("down8", 128, 256); rb("down9", 256, 256); ds("down10", 256)
    rb("down11", 256, 256); rb("down12", 256, 256); ds("down13", 256)
    rb("down14", 256, 512, True); rb("down15", 512, 512, True); ds("down16", 512)
    rb("down17", 512, 512); rb("down18", 512, 512)
    rb("mid1", 512, 512, True); rb("mid2", 512, 512)
    for n in (1, 2, 3):
        rb(f"up{n}", 1024, 512)
    us("up4", 512)
    rb("up5", 1024, 512, True); rb("up6", 1024, 512, True); rb("up7", 768, 512, True); us("up8", 512)
    rb("up9", 768, 256); rb("up10", 512, 256); rb("up11", 512, 256); us("up12", 256)
    rb("up13", 512, 256); rb("up14", 512, 256); rb("up15", 384, 256); us("up16", 256)
    rb("up17", 384, 128); rb("up18", 256, 128); rb("up19", 256, 128); us("up20", 128)
    for n in (21, 22, 23):
        rb(f"up{n}", 256, 128)
    return keys


def test_face_unet_state_dict_matches_assignment_layout():
    expected = face_unet_layout_from_spec()
    sd = FaceUNet().state_dict()
    assert len(expected) == 427
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    n_params = sum(p.numel() for p in FaceUNet().parameters())
    assert round(n_params / 1e6, 2) == 113.67


def test_face_unet_time_embedding_buffer():
    inv_freq = FaceUNet().state_dict()["time.0.inv_freq"]
    assert inv_freq.dtype == torch.float32
    expected = torch.exp(torch.arange(0, 128, 2, dtype=torch.float64)
                         * (-torch.log(torch.tensor(10000.0, dtype=torch.float64)) / 128))
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)
    emb = FaceUNet(base=32).time[0](torch.tensor([0, 999]))
    # sin first
    assert torch.allclose(emb[0, :16], torch.zeros(16)) and torch.allclose(emb[0, 16:], torch.ones(16))


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shapes(name):
    spec = get_spec(name)
    small = {"face_unet": {"base": 32}, "digit_unet": {"n_feat": 16}}.get(name, {})
    net = build_model(name, small).eval()
    feeds = spec.example_inputs(batch=3, height=32, width=64)
    with torch.no_grad():
        out = net(*feeds.values())
    outs = out if isinstance(out, tuple) else (out,)
    dims = {"batch": 3, **spec.default_dims, "height": 32, "width": 64}
    assert [tuple(o.shape) for o in outs] == [o.concrete_shape(dims) for o in spec.outputs]
    assert all(torch.isfinite(o).all() for o in outs)


def test_plain_state_dict_strict_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_model("face_unet", {"base": 32}).eval()
    torch.save(net.state_dict(), tmp_path / "UNet.pt")
    loaded, name, config = load_model(tmp_path / "UNet.pt", "face_unet")
    assert name == "face_unet" and config["base"] == 32
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    with torch.no_grad():
        assert torch.equal(net(x, t), loaded(x, t))


def test_safetensors_round_trip_keeps_config_and_fp32_buffers(tmp_path):
    torch.manual_seed(0)
    net = build_model("digit_unet", {"n_feat": 16}).eval()
    save_checkpoint(net, "digit_unet", tmp_path / "d.safetensors")
    sd, meta = read_checkpoint(tmp_path / "d.safetensors")
    assert meta == {"model": "digit_unet", "config": {"n_feat": 16, "n_classes": 10, "in_channels": 3}}
    assert sd["init_conv.conv1.0.weight"].dtype == torch.float16
    assert sd["init_conv.conv1.1.running_var"].dtype == torch.float32
    loaded, name, _ = load_model(tmp_path / "d.safetensors")
    assert name == "digit_unet"
    torch.testing.assert_close(loaded.init_conv.conv1[0].weight, net.init_conv.conv1[0].weight,
                               atol=1e-3, rtol=1e-3)
    f = FaceUNet(base=32)
    save_checkpoint(f, "face_unet", tmp_path / "f.safetensors")
    assert read_checkpoint(tmp_path / "f.safetensors")[0]["time.0.inv_freq"].dtype == torch.float32


def test_grader_loads_classifier_pth_form(tmp_path):
    net = build_model("digit_classifier")
    opt = torch.optim.Adam(net.parameters())
    net(torch.rand(2, 3, 28, 28)).sum().backward()
    opt.step()
    torch.save({"state_dict": net.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "Classifier.pth")
    loaded, _, _ = load_model(tmp_path / "Classifier.pth", "digit_classifier")
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))


def test_dann_classifier_loads_full_training_checkpoint(tmp_path):
    full = DANN()
    torch.save(full.state_dict(), tmp_path / "dann.pt")
    clf, name, _ = load_model(tmp_path / "dann.pt")
    assert name == "dann"
    x = torch.rand(3, 3, 28, 28)
    full.eval()
    with torch.no_grad():
        log_probs, features = clf(x)
        assert torch.equal(log_probs, full(x)[0]) and features.shape == (3, 512)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(3), atol=1e-5)


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    grad_reverse(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    assert grl_lambda(0.0) == 0.0 and abs(grl_lambda(1.0) - 0.99991) < 1e-4


def test_digit_unet_mask_drops_the_class():
    net = build_model("digit_unet", {"n_feat": 16}).eval()
    x, t = torch.randn(2, 3, 28, 28), torch.full((2,), 0.5)
    with torch.no_grad():
        dropped = net(x, torch.tensor([1, 7]), t, torch.ones(2))
        same = net(x, torch.tensor([3, 3]), t, torch.ones(2))
        cond = net(x, torch.tensor([1, 7]), t, torch.zeros(2))
    assert torch.equal(dropped, same)  # a dropped class carries no information
    assert not torch.allclose(dropped, cond)


def test_bundled_models_load_and_resolve_by_name(tmp_path, monkeypatch):
    from hw2rt.checkpoints import ASSETS, default_dann, resolve_checkpoint
    from hw2rt.errors import Hw2rtError

    for path in ASSETS.glob("*.safetensors"):
        net, name, _ = load_model(path)
        assert name in MODELS and sum(p.numel() for p in net.parameters()) > 0
    assert resolve_checkpoint("digit_classifier", "dann") == ASSETS / "digit_classifier.safetensors"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.pt").write_bytes(b"")
    assert resolve_checkpoint("mine.pt", "dann") == tmp_path.joinpath("mine.pt").relative_to(tmp_path)
    with pytest.raises(Hw2rtError, match="no bundled nothing_here model"):
        resolve_checkpoint(None, "nothing_here")
    assert default_dann("hw2_data/digits/svhn/data") == "dann_svhn"
    assert default_dann("hw2_data/digits/usps/data") == "dann_usps"
