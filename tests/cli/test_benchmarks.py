"""The speed benchmark runs end to end and reports figures that agree with each other (no timing is asserted)."""

import json
import sys

import pytest

from tests.helpers import REPO, compiled_frames

sys.path.insert(0, str(REPO / "benchmarks"))
import loop_speed  # noqa: E402

pytestmark = pytest.mark.fit  # it trains every loop


def test_loop_speed_measures_the_four_loops_and_derives_its_ratios_from_them(tmp_path, monkeypatch):
    """Three epochs of each loop on digits: every loop timed over the one epoch between warm-up and
    the last, and the ratios and overheads are those of the per-step times it printed."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "speed.json"
    args = ["--epochs", "3", "--repeats", "1", "--json", str(out), "-c", str(REPO / "configs/digits.yaml")]
    summary = loop_speed.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    loops = summary["loops"]
    assert set(loops) == {"lightning", "reference", "bare", "lightning_bare"}
    for loop in loops.values():
        assert loop["ms_per_step"] > 0 and loop["ms_per_step_inside_epochs"] > 0 and loop["ms_per_epoch_end"] > 0
        assert loop["img_per_s"] == pytest.approx(64 * 1000 / loop["ms_per_step"])
        assert 0 < loop["mfu"] < 1
    ms = {name: loop["ms_per_step"] for name, loop in loops.items()}
    assert summary["ratios"]["lightning/reference"] == pytest.approx(ms["reference"] / ms["lightning"])
    assert summary["ratios"]["reference/bare"] == pytest.approx(ms["bare"] / ms["reference"])
    assert summary["lightning_overhead_ms_per_step"] == pytest.approx(ms["lightning"] - ms["reference"])
    assert summary["lightning_own_ms_per_step"] == pytest.approx(ms["lightning_bare"] - ms["bare"])
    assert summary["epochs"] == 3 and summary["repeats"] == 1 and summary["device"].startswith("CPU")


def test_the_textbook_parts_have_none_of_the_fast_path_switches():
    """The bare loops train an eager network in the default memory format with torch's default
    optimizer implementation, whatever the config switches on."""
    args = [
        "-c",
        str(REPO / "configs/digits.yaml"),
        "--model.network.compile=default",
        "--model.network.channels_last=true",
    ]
    args += ["--model.optimizer.init_args.fused=true", "--data.device_cache=true"]
    train_loader, _, net, _, optimizer, _ = loop_speed.textbook_parts(args)
    assert net._compiled_call_impl is None  # nn.Module.compile() sets it
    assert all(p.is_contiguous() for p in net.parameters())
    assert not optimizer.defaults["fused"] and optimizer.defaults["nesterov"]
    assert type(train_loader).__name__ == "DataLoader"


def test_the_stopwatch_stays_out_of_a_compiled_networks_graph():
    """The clock's hook runs as it is: a compiled network is compiled once, and every step is timed."""
    import torch

    from project.models.simple_cnn import SimpleCNN

    net = SimpleCNN(10, in_channels=1)
    clock = loop_speed.Stopwatch(net, torch.device("cpu"))
    graphs, frames = compiled_frames(net, lambda: [net(torch.randn(4, 1, 8, 8)) for _ in range(6)])
    assert len(clock.times) == 6 and graphs == 1
    assert frames == 1  # traced, its clock reading recompiled it at every step


def test_loop_speed_can_leave_out_the_bare_loop_in_lightning(tmp_path, monkeypatch):
    """--skip_lightning_bare (the GPU run's slow DataLoader epochs): three loops, no figure of Lightning's own."""
    monkeypatch.chdir(tmp_path)
    args = ["--epochs", "3", "--repeats", "1", "--skip_lightning_bare", "--json", str(tmp_path / "s.json")]
    summary = loop_speed.main([*args, "-c", str(REPO / "configs/digits.yaml")])
    assert set(summary["loops"]) == {"lightning", "reference", "bare"}
    assert summary["lightning_own_ms_per_step"] is None


def test_a_time_boxed_run_ends_after_a_whole_round_and_keeps_it(tmp_path, monkeypatch, capsys):
    """--max_minutes 0: the first round runs, no second one starts, and the JSON holds that round."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s.json"
    args = ["--epochs", "3", "--repeats", "3", "--max_minutes", "0", "--skip_lightning_bare", "--json", str(out)]
    summary = loop_speed.main([*args, "-c", str(REPO / "configs/digits.yaml")])
    assert summary["repeats"] == 1 and json.loads(out.read_text())["repeats"] == 1
    assert all(len(loop["runs_ms_per_step"]) == 1 for loop in summary["loops"].values())
    assert "--max_minutes 0 reached: 1 of 3 rounds done" in capsys.readouterr().err
