"""Training state files: nested optimiser/RNG state survives a round trip without pickles."""

import pytest
import torch

from uh_train.train_state import load_state, save_state


def test_optimizer_and_rng_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.0, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state(),
             "progress": {"step": 3, "data": {"0/src": 17}}, "note": None}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["progress"] == {"step": 3, "data": {"0/src": 17}} and back["note"] is None
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    opt2.load_state_dict(back["opt"])
    assert opt2.param_groups[0]["betas"] == (0.0, 0.99) and opt2.param_groups[0]["lr"] == 0.01
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg_sq"], opt.state_dict()["state"][0]["exp_avg_sq"])
    gen2 = torch.Generator()
    gen2.set_state(back["rng"])
    assert torch.equal(torch.randn(4, generator=gen2), torch.randn(4, generator=gen))


def test_damaged_state_file_gives_a_clear_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable training state"):
        load_state(tmp_path / "bad.safetensors")


def test_write_is_atomic_no_temp_left(tmp_path):
    save_state(tmp_path / "s.safetensors", {"x": torch.zeros(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]
