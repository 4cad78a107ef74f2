"""Checkpoints on bad input: another model's, missing/unexpected keys, truncated files, pickles of
arbitrary objects: one-line errors naming the file."""
import pickle

import pytest
import torch

from hw2rt.checkpoints import load_model
from hw2rt.errors import Hw2rtError
from hw2rt.models import build_model


def test_checkpoint_of_another_model(tmp_path):
    torch.save(build_model("digit_classifier").state_dict(), tmp_path / "clf.pt")
    with pytest.raises(Hw2rtError,
                       match="clf.pt: holds a digit_classifier checkpoint, but this needs a face_unet"):
        load_model(tmp_path / "clf.pt", "face_unet")


def test_checkpoint_missing_unexpected_and_shape_mismatch(tmp_path):
    sd = build_model("face_unet", {"base": 32}).state_dict()
    del sd["up23.resblocks.conv2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["out.2.weight"] = torch.zeros(4, 32, 3, 3)
    torch.save(sd, tmp_path / "UNet.pt")
    with pytest.raises(Hw2rtError) as err:
        load_model(tmp_path / "UNet.pt", "face_unet")
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "UNet.pt"))
    assert "1 missing: up23.resblocks.conv2.bias" in msg and "1 unexpected: extra.weight" in msg
    assert "out.2.weight: (4, 32, 3, 3) vs (3, 32, 3, 3)" in msg and "\n" not in msg


def test_truncated_checkpoint(tmp_path):
    torch.save(build_model("digit_classifier").state_dict(), tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[:1000])
    with pytest.raises(Hw2rtError, match="c.pt: not a readable checkpoint"):
        load_model(tmp_path / "c.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_of_arbitrary_objects_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(Hw2rtError, match="evil.pt: refused"):
        load_model(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


def test_state_dict_that_is_not_tensors(tmp_path):
    torch.save({"a": 1, "b": [1, 2]}, tmp_path / "x.pt")
    with pytest.raises(Hw2rtError, match="x.pt: not a state dict"):
        load_model(tmp_path / "x.pt")
