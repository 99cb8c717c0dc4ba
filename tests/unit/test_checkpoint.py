import errno

import pytest
import torch

from openhart.serialization import CheckpointError
from openhart.train import checkpoint as ckpt


def _state(step):
    """What `openhart train` writes, for a tiny model."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {"kind": "tokenizer", "model": model.state_dict(), "ema": None, "optimizer": optimizer.state_dict(),
            "scheduler": {}, "config": {"width": 3}, "extra": {}, "world_size": 1,
            "rng": [ckpt.rng_states()], "data_positions": [{"epoch": 1, "offset": step}]}


def test_save_load_keep_last(tmp_path):
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(tmp_path, step, _state(step), keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000030.pt", "ckpt-00000040.pt"]
    state = ckpt.load_checkpoint(tmp_path, config={"width": 3})
    assert state["step"] == 40 and state["data_positions"] == [{"epoch": 1, "offset": 40}]
    assert "exp_avg" in state["optimizer"]["state"][0]


def test_rng_round_trip():
    states = ckpt.rng_states()
    expected = torch.rand(4)
    ckpt.restore_rng_states(states)
    assert torch.equal(torch.rand(4), expected)
    with pytest.raises(CheckpointError, match="torch_global"):
        ckpt.restore_rng_states({})


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, _state(1))
    before = (tmp_path / "ckpt-00000001.pt").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(tmp_path, 2, _state(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001.pt"]
    assert (tmp_path / "ckpt-00000001.pt").read_bytes() == before
    assert ckpt.load_checkpoint(tmp_path)["step"] == 1


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.pt", "checkpoint not found"),
    (lambda d: d, "no checkpoint"),
    (lambda d: (torch.save({"a": torch.zeros(1)}, d / "x.pt"), d / "x.pt")[1], "not an openhart training checkpoint"),
    (lambda d: ((d / "y.pt").write_bytes(b"garbage"), d / "y.pt")[1], "not a readable"),
])
def test_bad_resume_paths(tmp_path, make, message):
    with pytest.raises(CheckpointError, match=message):
        ckpt.load_checkpoint(make(tmp_path))


def test_other_architecture_is_refused(tmp_path):
    ckpt.save_checkpoint(tmp_path, 5, _state(5))
    with pytest.raises(CheckpointError, match="another architecture"):
        ckpt.load_checkpoint(tmp_path, config={"width": 4})


@pytest.mark.parametrize("doctor, message, resume", [
    (lambda s: s.pop("model"), "lacks its 'model' entry", False),
    (lambda s: s.pop("kind"), "lacks its 'kind' entry", False),
    (lambda s: s.update(step="ten"), "its 'step' entry", False),
    (lambda s: s.update(model={"w": [1, 2]}), "its 'model' entry", False),
    (lambda s: s.update(ema=5), "its 'ema' entry", False),
    (lambda s: s.pop("optimizer"), "lacks its 'optimizer' entry", True),
    (lambda s: s.pop("rng"), "lacks its 'rng' entry", True),
    (lambda s: s.pop("data_positions"), "lacks its 'data_positions' entry", True),
    (lambda s: s.update(data_positions=[{"epoch": -1, "offset": 0}]), "its 'data_positions' entry", True),
    (lambda s: s.update(world_size=2), "its 'data_positions' entry", True),
])
def test_doctored_checkpoints_are_refused_by_entry(tmp_path, doctor, message, resume):
    state = _state(5)
    doctor(state)
    ckpt.save_checkpoint(tmp_path, 5, state)
    with pytest.raises(CheckpointError, match=message):
        ckpt.load_checkpoint(tmp_path, resume=resume)


def test_export_needs_less_than_a_resume(tmp_path):
    state = _state(5)
    state.pop("optimizer")
    ckpt.save_checkpoint(tmp_path, 5, state)
    assert ckpt.load_checkpoint(tmp_path)["step"] == 5  # what export reads is all there
