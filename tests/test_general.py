import json
from dataclasses import dataclass

import pytest
import torch

from general_functions.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from general_functions.config_utils import (
    ConfigError,
    check_bounds,
    config_from_dict,
    opt,
    parse_config,
)
from general_functions.dataloaders import (
    DataError,
    load_cifar10,
    make_fake_data,
    make_loader,
    split_train,
)
from general_functions.utils import accuracy, get_rng_state, set_rng_state


@dataclass
class _Cfg:
    lr: float = opt(0.1, "learning rate", "paper")
    epochs: int = opt(140, "epochs")
    milestones: list[int] = opt([90, 110], "milestones")
    amp: bool = opt(False, "mixed precision")
    name: str | None = opt(None, "name")
    mode: str = opt("a", "mode", choices=("a", "b"))


def test_config_precedence_and_types(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"lr": 0.5, "epochs": 3}))
    presets = {"smoke": {"epochs": 1, "amp": True}}
    cfg = parse_config(
        _Cfg, ["--preset", "smoke", "--config", str(file), "--lr", "0.2"], presets=presets
    )
    assert (cfg.lr, cfg.epochs, cfg.amp, cfg.milestones) == (0.2, 3, True, [90, 110])
    cfg = parse_config(_Cfg, ["--milestones", "5,7", "--amp", "False", "--name", "x"])
    assert cfg.milestones == [5, 7] and cfg.amp is False and cfg.name == "x"


def test_config_rejects_bad_values(tmp_path, capsys):
    for argv in (["--epochs", "two"], ["--mode", "c"]):
        with pytest.raises(SystemExit):
            parse_config(_Cfg, argv)
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"learning_rate": 0.5}))
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--config", str(file)])
    assert "unknown configuration keys ['learning_rate']" in capsys.readouterr().err


@dataclass
class _Bounded:
    n: int = opt(2, "a count")
    share: float = opt(0.5, "a share")
    name: str = opt("", "a name")
    BOUNDS = {"n": "[1, inf)", "share": "(0, 1)"}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"n": 0}, "--n must be at least 1, got 0"),
        ({"share": 1.0}, "--share must be in (0, 1), got 1.0"),
        ({"share": 0.0}, "--share must be in (0, 1), got 0.0"),
        ({"share": float("nan")}, "--share must be in (0, 1), got nan"),
    ],
)
def test_bounds_refuse_values_outside_and_name_the_flag(values, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_Bounded, values)
    assert str(err.value) == message
    assert config_from_dict(_Bounded, {"n": 1, "share": 0.999}).n == 1


def test_a_bound_broken_in_a_config_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"n": -3}))
    with pytest.raises(SystemExit) as exit_info:
        parse_config(_Bounded, ["--config", str(file)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --n must be at least 1, got -3\n"


def test_help_escapes_percent_and_words_empty_defaults(capsys):
    @dataclass
    class _Help:
        speed: str = opt("auto", "about 5% faster")
        folder: str = opt("", "where to write", "paper")
        other: str = opt("", "empty: the default folder")

    with pytest.raises(SystemExit):
        parse_config(_Help, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "about 5% faster (default: auto)" in out
    assert "where to write (default: empty; paper)" in out
    assert "empty: the default folder" in out  # the help says what empty means itself:
    assert "empty: the default folder (default" not in out  # no "(default: empty)" after it


def test_real_configs_bound_only_their_own_fields_and_their_defaults_fit():
    from architecture_functions.config_for_arch import PRESETS as ARCH_PRESETS
    from architecture_functions.config_for_arch import ArchTrainConfig
    from supernet_functions.config_for_supernet import PRESETS, SupernetConfig
    from supernet_functions.latency.cli import LUTConfig

    for cls, presets in (
        (ArchTrainConfig, ARCH_PRESETS),
        (SupernetConfig, PRESETS),
        (LUTConfig, {}),
    ):
        assert set(cls.BOUNDS) <= set(cls.__dataclass_fields__), cls.__name__
        check_bounds(cls())
        for preset in presets.values():
            check_bounds(config_from_dict(cls, preset))


def test_checkpoint_round_trip_and_errors(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"stage": "architecture", "epoch": 3, "rng": get_rng_state()})
    state = load_checkpoint(path, stage="architecture")
    assert state["epoch"] == 3
    set_rng_state(state["rng"])
    a = torch.rand(3)
    set_rng_state(load_checkpoint(path)["rng"])
    torch.testing.assert_close(torch.rand(3), a)
    with pytest.raises(CheckpointError, match="not a 'supernet'"):
        load_checkpoint(path, stage="supernet")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth")


def test_a_format_1_search_checkpoint_loads_in_epochs_done(tmp_path):
    """Format 1 counted a search's epochs from 0; loading gives epochs done (training's count already)."""
    for stage, epoch, best, want in (("supernet", 4, 2, (5, 3)), ("architecture", 4, 2, (4, 2))):
        path = tmp_path / f"{stage}.pth"
        torch.save({"format_version": 1, "stage": stage, "epoch": epoch, "best_epoch": best}, path)
        state = load_checkpoint(path, stage)
        assert (state["epoch"], state["best_epoch"], state["format_version"]) == (*want, 2)
    torch.save({"format_version": 3, "stage": "supernet", "epoch": 1}, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match="format 3"):
        load_checkpoint(tmp_path / "new.pth")


def test_metrics_of_a_format_1_search_are_renumbered_from_one(tmp_path):
    from general_functions.run_folder import steps_from_one

    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n0,2.5\n1,2.0\n")
    assert steps_from_one(path)
    assert path.read_text().splitlines() == ["step,loss", "1,2.5", "2,2.0"]
    # from 1 already: left alone, so a second resume changes nothing
    assert not steps_from_one(path)
    assert path.read_text().splitlines() == ["step,loss", "1,2.5", "2,2.0"]


def test_rng_state_restores_every_generator():
    import random

    import numpy as np

    state = get_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    assert accuracy(logits, torch.tensor([1, 2]), topk=(1, 2)) == [50.0, 50.0]


def test_missing_cifar_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 at"):
        load_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="missing data_batch_1"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("kind", ["tensor", "torchvision"])
def test_loaders_agree_in_shape_and_statistics(kind):
    data = make_fake_data(64, 32)
    loader = make_loader(data.train, 16, train=True, loader=kind, workers=0, seed=1)
    batches = list(loader)
    assert len(batches) == 4 and batches[0][0].shape == (16, 3, 32, 32)
    loader.set_epoch(0)
    again = list(loader)
    torch.testing.assert_close(batches[1][0], again[1][0])  # same epoch, same batches
    loader.set_epoch(1)
    assert not torch.equal(list(loader)[0][1], batches[0][1])
    test = list(make_loader(data.test, 32, train=False, loader=kind, workers=0))[0][0]
    expected = (
        data.test.images[:32].float() / 255 - torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    ) / torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    torch.testing.assert_close(test, expected, atol=1e-5, rtol=1e-5)


def test_tensor_crop_is_a_shifted_window():
    data = make_fake_data(8, 8)
    loader = make_loader(data.train, 8, train=True, seed=3)
    x = data.train.images.float()
    gen = torch.Generator().manual_seed(0)
    out = loader._augment(data.train.images, gen)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        ok = any(
            torch.equal(out[i].float(), padded[i, :, dy : dy + 32, dx : dx + 32])
            or torch.equal(out[i].float(), padded[i, :, dy : dy + 32, dx : dx + 32].flip(2))
            for dy in range(9)
            for dx in range(9)
        )
        assert ok


def test_split_is_disjoint_80_20():
    data = make_fake_data(100, 10)

    def keys(part) -> list[bytes]:  # every fake image is distinct: its bytes name it
        return [img.numpy().tobytes() for img in part.images]

    everything = keys(data.train)
    assert len(set(everything)) == 100
    w, t = split_train(data.train, 0.8, seed=0)
    assert len(w) == 80 and len(t) == 20
    assert set(keys(w)).isdisjoint(keys(t)) and set(keys(w)) | set(keys(t)) == set(everything)
    assert keys(split_train(data.train, 0.8, seed=0)[0]) == keys(w)  # the seed fixes the split
    assert keys(split_train(data.train, 0.8, seed=1)[0]) != keys(w)
    w2, t2 = split_train(data.train, 0.8, seed=0, limit=50)
    assert len(w2) == 40 and len(t2) == 10 and set(keys(w2)).isdisjoint(keys(t2))


def test_old_flag_names_still_work_with_one_warning(tmp_path, capsys):
    from architecture_functions.config_for_arch import ArchTrainConfig
    from general_functions.config_utils import given_fields
    from supernet_functions.config_for_supernet import SupernetConfig

    cfg = parse_config(ArchTrainConfig, ["--run_dir", "somewhere", "--epochs", "3"])
    assert cfg.log_dir == "somewhere" and given_fields(cfg) == {"log_dir", "epochs"}
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "warning: --run_dir is deprecated and will be removed; use --log_dir"
    cfg = parse_config(SupernetConfig, ["--stop_epoch", "2", "--steps_per_epoch", "5"])
    assert (cfg.stop_after_epoch, cfg.max_steps_per_epoch) == (2, 5)
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
    file = tmp_path / "old.json"
    file.write_text(json.dumps({"stop_epoch": 4, "log_dir": "x"}))
    cfg = parse_config(SupernetConfig, ["--config", str(file)])
    assert cfg.stop_after_epoch == 4 and cfg.log_dir == "x"
    assert "key 'stop_epoch' is deprecated" in capsys.readouterr().err
    assert parse_config(SupernetConfig, ["--stop_after_epoch", "1"]).stop_after_epoch == 1
    assert capsys.readouterr().err == ""


def test_given_fields_are_what_the_user_set(tmp_path):
    from general_functions.config_utils import config_from_dict, given_fields

    file = tmp_path / "c.json"
    file.write_text(json.dumps({"lr": 0.1}))  # the default value, but given
    presets = {"smoke": {"epochs": 1}}
    cfg = parse_config(_Cfg, ["--preset", "smoke", "--config", str(file), "--amp"], presets=presets)
    assert given_fields(cfg) == {"epochs", "lr", "amp"}
    assert given_fields(parse_config(_Cfg, [])) == set()
    # built in code: the fields that differ from the defaults
    assert given_fields(config_from_dict(_Cfg, {"lr": 0.1, "epochs": 2})) == {"epochs"}
