"""`--backend auto` on a CPU: the kind read from the flags, the recorded rules, `--precision auto`, and
the one line that says what was chosen (engines/auto.py)."""
import pytest
from click.testing import CliRunner

from hw2rt import options
from hw2rt.cli import main
from hw2rt.engines import auto, open_engine
from hw2rt.errors import Hw2rtError
from tests.helpers import small_net

SAPPHIRE_RAPIDS = {"avx2": True, "fma": True, "avx512f": True, "avx512_bf16": True, "avx512_vnni": True,
                   "amx_bf16": True, "amx_tile": True}
ZEN4 = {"avx2": True, "fma": True, "avx512f": True, "avx512_bf16": True, "avx512_vnni": True}
ZEN3 = {"avx2": True, "fma": True}
ICE_LAKE = {"avx2": True, "fma": True, "avx512f": True, "avx512_vnni": True}  # AVX-512 without bf16


@pytest.mark.parametrize("flags, kind", [(SAPPHIRE_RAPIDS, "amx"), (ZEN4, "avx512-bf16"), (ZEN3, "avx2"),
                                         (ICE_LAKE, "other"), ({}, "other")])
def test_cpu_kind_from_flags(flags, kind):
    assert auto.cpu_kind(flags) == kind


def test_every_rule_names_a_backend_that_serves_its_precision():
    for kind, rules in auto.CPU_RULES.items():
        assert kind in auto.KIND_LABELS
        for precision, measured in rules.items():
            assert measured and len({r.backend for r in measured}) == len(measured)
            for rule in measured:
                assert rule.backend in options.BACKENDS and set(rule.ms) <= set(options.MODELS)
                assert "digit_unet" in rule.ms and all(ms > 0 for ms in rule.ms.values())
                assert precision != "bf16" or rule.backend in options.BF16_BACKENDS
                assert precision not in options.QUANTIZED or rule.backend != "torch"
    for model, passed in auto.GATES_PASSED.items():
        assert model in options.MODELS and "fp32" in passed and set(passed) <= set(options.PRECISIONS)
        for backends in passed.values():  # ANY, or backends and (backend, CPU kind) pairs
            assert backends is auto.ANY or all(
                b in options.BACKENDS if isinstance(b, str) else b[0] in options.BACKENDS and b[1] in
                auto.CPU_RULES for b in backends), backends
    for model, marginal in auto.MARGINAL.items():
        assert all(set(backends) <= set(options.BACKENDS) and precision in auto.GATES_PASSED[model]
                   for precision, backends in marginal.items())


@pytest.mark.parametrize("kind", [*auto.CPU_RULES, "other"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "fp16"])
def test_the_rules_decide_and_an_unmeasured_kind_falls_back_to_ort(kind, precision):
    choice = auto.choose("digit_unet", precision, "cpu", kind=kind)
    measured = auto.CPU_RULES.get(kind, {}).get(precision, [])
    rule = min(measured, key=lambda r: r.ms["digit_unet"], default=None)  # the digits' gates are ANY
    assert choice.backend == (rule.backend if rule else auto.FALLBACK[precision])
    assert choice.precision == precision and choice.compile == bool(rule and rule.compile)
    assert choice.line().startswith(f"auto: {choice.backend}") and auto.KIND_LABELS[kind] in choice.line()
    if kind == "other":
        assert choice.backend == ("torch" if precision == "bf16" else "ort")
    assert auto.choose("digit_unet", precision, "cpu", kind=kind) == choice  # deterministic


def picked(*args, **kwargs) -> tuple:
    choice = auto.choose(*args, **kwargs)
    return choice.backend, choice.precision


def test_precision_auto_is_the_fastest_precision_whose_gate_passed(monkeypatch):
    monkeypatch.setitem(auto.CPU_RULES, "amx", {
        "fp32": [auto.Rule("ort", {"digit_unet": 400.0, "face_unet": 900.0, "dann": 100.0})],
        "bf16": [auto.Rule("openvino", {"digit_unet": 60.0, "face_unet": 950.0})],
        "int8": [auto.Rule("openvino", {"digit_unet": 170.0, "face_unet": 500.0, "dann": 50.0})]})
    any_ = auto.ANY
    monkeypatch.setitem(auto.GATES_PASSED, "digit_unet", {"fp32": any_, "int8": any_, "bf16": any_})
    monkeypatch.setitem(auto.GATES_PASSED, "face_unet", {"fp32": any_, "bf16": any_, "int8": any_})
    monkeypatch.setattr(auto, "MARGINAL", {})
    monkeypatch.setitem(auto.GATES_PASSED, "dann", {"fp32": any_, "bf16": any_})
    assert picked("digit_unet", "auto", "cpu", kind="amx") == ("openvino", "bf16")
    # per network: the face's bf16 is slower than its fp32 here, and int8 faster than both
    assert picked("face_unet", "auto", "cpu", kind="amx") == ("openvino", "int8")
    assert picked("dann", "auto", "cpu", kind="amx") == ("ort", "fp32")  # bf16 passed, never timed on dann
    line = auto.choose("face_unet", "auto", "cpu", kind="amx").line()
    assert line.startswith("auto: openvino int8 (AMX; the fastest precision") and "fp32, bf16, int8" in line
    assert picked("digit_unet", "auto", "cpu", kind="other") == ("ort", "fp32")  # no timings
    # a gate passed on one backend only: the fastest backend that passed it, where it was timed
    monkeypatch.setitem(auto.GATES_PASSED, "face_unet", {"fp32": any_, "bf16": ("torch",)})
    monkeypatch.setitem(auto.CPU_RULES["amx"], "bf16", [auto.Rule("openvino", {"digit_unet": 60.0,
                                                                                "face_unet": 100.0})])
    assert picked("face_unet", "auto", "cpu", kind="amx") == ("ort", "fp32")  # bf16 on torch: not timed
    choice = auto.choose("face_unet", "bf16", "cpu", kind="amx")
    assert (choice.backend, choice.precision) == ("torch", "bf16")  # the fallback: openvino missed the gate
    assert "no backend measured for it passed the gate" in choice.line()
    monkeypatch.setitem(auto.CPU_RULES["amx"], "bf16", [
        auto.Rule("openvino", {"digit_unet": 60.0, "face_unet": 100.0}),
        auto.Rule("torch", {"digit_unet": 80.0, "face_unet": 120.0})])
    assert picked("face_unet", "bf16", "cpu", kind="amx") == ("torch", "bf16")
    assert picked("digit_unet", "bf16", "cpu", kind="amx") == ("openvino", "bf16")
    assert picked("face_unet", "auto", "cpu", kind="amx") == ("torch", "bf16")  # 120 ms < fp32's 900
    # passed on openvino on this kind only, and too close to the budget on torch (MARGINAL): openvino is
    # taken though torch is faster; where openvino did not pass, bf16 by name runs on torch, auto never
    gated = {"fp32": any_, "bf16": ("torch", ("openvino", "amx"))}
    monkeypatch.setitem(auto.GATES_PASSED, "face_unet", gated)
    monkeypatch.setattr(auto, "MARGINAL", {"face_unet": {"bf16": ("torch",)}})
    monkeypatch.setitem(auto.CPU_RULES["amx"], "bf16", [
        auto.Rule("openvino", {"digit_unet": 60.0, "face_unet": 150.0}),
        auto.Rule("torch", {"digit_unet": 80.0, "face_unet": 120.0})])
    assert picked("face_unet", "auto", "cpu", kind="amx") == ("openvino", "bf16")
    assert picked("face_unet", "bf16", "cpu", kind="amx") == ("openvino", "bf16")
    monkeypatch.setitem(auto.CPU_RULES, "avx512-bf16", auto.CPU_RULES["amx"])
    assert picked("face_unet", "auto", "cpu", kind="avx512-bf16") == ("ort", "fp32")  # not on this kind
    assert picked("face_unet", "bf16", "cpu", kind="avx512-bf16") == ("torch", "bf16")


def test_this_repository_s_rules_on_zen4():
    """What the recorded rules give on the Zen 4 they were measured on (RESULTS.md, "auto's rules")."""
    assert picked("digit_unet", "auto", "cpu", kind="avx512-bf16") == ("ort", "int8")
    # bf16: MARGINAL on torch, and openvino's passed on AMX only
    assert picked("face_unet", "auto", "cpu", kind="avx512-bf16") == ("ort", "fp32")
    assert picked("face_unet", "bf16", "cpu", kind="avx512-bf16") == ("torch", "bf16")
    assert picked("digit_unet", "bf16", "cpu", kind="avx512-bf16") == ("openvino", "bf16")
    assert picked("dann", "auto", "cpu", kind="avx512-bf16") == ("openvino", "bf16")  # 60.9 ms; ort fp32 104
    assert picked("digit_unet", None, "cpu", kind="amx") == ("ort", "fp32")  # the default: fp32


def test_this_repository_s_rules_on_sapphire_rapids():
    """What the recorded rules give on the AMX machine they were measured on (RESULTS.md, "auto's rules")."""
    assert picked("digit_unet", "auto", "cpu", kind="amx") == ("openvino", "bf16")  # 62 ms, int8 122
    assert picked("face_unet", "auto", "cpu", kind="amx") == ("openvino", "bf16")  # passed here, 634 < 1015
    assert picked("face_unet", "bf16", "cpu", kind="amx") == ("openvino", "bf16")  # torch's 623: MARGINAL
    assert picked("dann", "auto", "cpu", kind="amx") == ("openvino", "bf16")  # gated bf16: 25.9 ms, fp32 84.5
    assert picked("dann", "auto", "cpu", kind="avx2") == ("ort", "fp32")  # bf16 emulated there, never timed
    assert picked("digit_unet", "int8", "cpu", kind="amx") == ("openvino", "int8")
    assert auto.choose("digit_unet", "auto", "cpu", kind="amx").line().startswith("auto: openvino bf16 (AMX;")


def test_open_engine_records_and_the_command_prints_its_choice(tmp_path):
    net = small_net("dann")
    engine = open_engine("dann", net, backend="torch")
    assert engine.auto_choice is None and engine.describe()["auto"] is None
    engine = open_engine("dann", net, precision="fp32")
    choice = auto.choose("dann", "fp32", "cpu")
    assert engine.auto_choice == choice and engine.backend == choice.backend
    assert engine.describe()["auto"] == choice.line()
    with pytest.raises(Hw2rtError, match="precision auto chooses the backend too"):
        open_engine("dann", net, backend="torch", precision="auto")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    Image.new("RGB", (28, 28), (120, 30, 200)).save(images / "00001.png")
    result = CliRunner().invoke(main, ["classify", "--images", str(images), "--out", str(tmp_path / "p.csv"),
                                       "--precision", "fp32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == auto.choose("dann", "fp32", "cpu").line()


def test_an_install_without_openvino_falls_back(monkeypatch):
    """The GPU machine's package set has no openvino: a rule naming it falls back to FALLBACK, saying so, or
    to the other backend measured."""
    real = auto.importlib.util.find_spec
    monkeypatch.setattr(auto.importlib.util, "find_spec",
                        lambda name: None if name == "openvino" else real(name))
    assert picked("digit_unet", "int8", "cpu", kind="amx") == ("ort", "int8")  # measured beside it
    monkeypatch.setitem(auto.CPU_RULES["amx"], "int8", [auto.Rule("openvino", {"digit_unet": 126.0})])
    choice = auto.choose("digit_unet", "int8", "cpu", kind="amx")
    assert (choice.backend, choice.precision) == ("ort", "int8")
    assert "or is installed" in choice.line()
    assert picked("digit_unet", "bf16", "cpu", kind="amx") == ("torch", "bf16")  # the other one measured
