"""The entry points as a new user meets them: --help of every mode, one-line errors, the README's
smoke commands run as printed."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import architecture_main_file
import supernet_main_file
from architecture_functions.config_for_arch import ArchTrainConfig
from general_functions.config_utils import build_parser, config_from_dict, parse_config
from supernet_functions.config_for_supernet import SupernetConfig
from supernet_functions.sampling import run_sampling

REPO = Path(__file__).resolve().parent.parent
SMOKE_MARKER = "<!-- smoke:"

# (argv, text the help must show, text it must not show: the options of another mode)
HELP_CASES = {
    "architecture": (
        ["architecture_main_file.py"],
        ["--architecture_name", "--eval_only", "--channels_last", "~1%"],
        ["--hardsampling_bool_value", "--w_lr"],
    ),
    "supernet": (
        ["supernet_main_file.py"],
        ["options of train (the search)", "options of sample", "--w_lr", "--num_samples"],
        [],
    ),
    "train": (
        ["supernet_main_file.py", "--train_or_sample", "train"],
        ["options of train (the search)", "--w_lr", "--mixing", "--log_dir"],
        ["--hardsampling_bool_value", "--num_samples", "options of sample"],
    ),
    "sample": (
        ["supernet_main_file.py", "--train_or_sample", "sample"],
        ["options of sample", "--hardsampling_bool_value", "--num_samples", "--log_dir"],
        ["--w_lr", "--batch_size", "--mixing", "options of train"],
    ),
    "build_lut": (
        ["supernet_main_file.py", "--train_or_sample", "build_lut"],
        ["--lut_path"],
        ["--w_lr", "--hardsampling_bool_value"],
    ),
    "validate_lut": (
        ["supernet_main_file.py", "--train_or_sample", "validate_lut"],
        ["--lut_path"],
        ["--w_lr", "--hardsampling_bool_value"],
    ),
}
SCRIPTS = {
    "architecture_main_file.py": architecture_main_file,
    "supernet_main_file.py": supernet_main_file,
}


@pytest.mark.parametrize("case", list(HELP_CASES))
def test_help_of_every_mode_shows_that_modes_options(case, capsys):
    (script, *argv), shown, not_shown = HELP_CASES[case]
    with pytest.raises(SystemExit) as exit_info:
        SCRIPTS[script].main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    for text in shown:
        assert text in out, text
    listed = set(
        re.findall(r"^  (--\w+)", out, re.M)
    )  # the flags the help lists (not its usage text)
    headings = "\n".join(line for line in out.splitlines() if line.endswith(":"))
    for text in not_shown:
        assert text not in (listed if text.startswith("--") else headings), text
    assert "(default: ;" not in out and "(default: )" not in out
    assert "shared/data" not in out  # no folder of this project's own machine


def test_evaluate_search_help_explains_every_option(capsys):
    from supernet_functions.experiments import evaluate_search

    parser = build_parser(evaluate_search.EvaluateConfig)
    assert [a.dest for a in parser._actions if not a.help] == []
    with pytest.raises(SystemExit):
        evaluate_search.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m supernet_functions.experiments.evaluate_search ")
    for text in ("--progress [BOOL] tqdm progress bars", "--runs RUNS [RUNS ...]"):
        assert text in out, text
    default = evaluate_search.PROXIES["cifar10"]  # the help states the default recipe as it is
    assert f"cifar10 (the default: {default['epochs']} epochs" in out and "shared/data" not in out
    assert f"batch {default['batch_size']}, SGD lr {default['lr']}" in out
    config = parse_config(
        evaluate_search.EvaluateConfig, ["--progress", "False", "--runs", "a", "b"]
    )
    assert config.progress is False and config.runs == ["a", "b"]
    assert parse_config(evaluate_search.EvaluateConfig, ["--seeds", "3,4"]).seeds == [3, 4]
    with pytest.raises(SystemExit):
        parse_config(evaluate_search.EvaluateConfig, ["--progress", "Flase"])  # not read as False


def _python(argv: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    # seconds on a quiet machine; the bound only stops a hang (a starved shared machine took 300 s+)
    env = {k: v for k, v in os.environ.items() if k != "FBNET_ARCH_DIR"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_in_a_fresh_process_prints_no_warning():
    """The search and the table tool are imported before --help (torch warned about CUDA_HOME)."""
    proc = _python(["supernet_main_file.py", "--train_or_sample", "build_lut", "--help"], REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("usage:")


@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch_size", "0"], "error: --batch_size must be at least 1, got 0\n"),
        (["--epochs", "0"], "error: --epochs must be at least 1, got 0\n"),
        (["--device", "cuda"], "error: --device cuda: torch sees no CUDA device here"),
    ],
    ids=["batch_size", "epochs", "device"],
)
def test_bad_number_or_absent_device_is_one_line(
    script, flags, message, tmp_path, monkeypatch, capsys
):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)  # a run folder made before the error would land here
    threads = torch.get_num_threads()  # the smoke presets may set it
    try:
        with pytest.raises(SystemExit) as exit_info:
            SCRIPTS[script].main(["--preset", "smoke", "--progress", "False", *flags])
    finally:
        torch.set_num_threads(threads)
    # sys.exit(text) prints text itself; parse_config prints it and exits with 2
    code = exit_info.value.code
    err = capsys.readouterr().err + (code if isinstance(code, str) else "")
    assert err.startswith(message) and err.count("\n") <= 1, err
    assert "Traceback" not in err


# (entry point, argv with a prefix of one of its flags): argparse would read each as that flag
ABBREVIATED = {
    "train --epoch": ("supernet_main_file", ["--train_or_sample", "train", "--epoch", "2"]),
    "train --max_step": ("supernet_main_file", ["--max_step", "3"]),
    "sample --arch": ("supernet_main_file", ["--train_or_sample", "sample", "--arch", "a"]),
    "build_lut --lut_pat": (
        "supernet_main_file",
        ["--train_or_sample", "build_lut", "--lut_pat", "x"],
    ),
    "architecture --epoch": ("architecture_main_file", ["--epoch", "2"]),
    "export --form": ("architecture_main_file", ["--export", "x.pth", "--form", "onnx"]),
    "evaluate_search --epoch": (
        "supernet_functions.experiments.evaluate_search",
        ["--run", "r", "--epoch", "2"],
    ),
    "summary --search": ("fbnet_building_blocks.summary", ["--search", "tiny"]),
}


@pytest.mark.parametrize("case", list(ABBREVIATED))
def test_a_prefix_of_a_flag_is_refused_not_read_as_that_flag(case, capsys):
    module, argv = ABBREVIATED[case]
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unrecognized arguments: " + argv[-2] in err, err


def test_every_argument_parser_of_the_repository_refuses_abbreviations():
    """Every parser, bench scripts and sub-commands included, is made with allow_abbrev=False."""
    calls = []
    for path in [*REPO.glob("*.py"), *REPO.glob("*/*.py")]:
        if path.parent.name == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(getattr(node, "func", None), "attr", None)
            if isinstance(node, ast.Call) and name in ("ArgumentParser", "add_parser"):
                off = any(k.arg == "allow_abbrev" and k.value.value is False for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", off))
    assert len(calls) >= 15
    assert [where for where, off in calls if not off] == []


def test_cutting_the_epochs_cuts_the_warm_up_with_one_warning(tmp_path, monkeypatch, capsys):
    """``--epochs 2`` alone (the default warm-up is 10) starts: the search goes on to the data."""
    from supernet_functions.training_functions_supernet import fit_warmup

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    argv = ["--epochs", "2", "--max_steps_per_epoch", "3", "--data_dir", "none", "--threads", "1"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            supernet_main_file.main([*argv, "--progress", "False"])
    finally:
        torch.set_num_threads(threads)
    assert str(exit_info.value.code).startswith("error: no CIFAR-10 at none")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warm" in line]
    assert warnings == [
        "warning: --warmup_epochs 10 is more than --epochs 2: the warm-up is cut to 1 "
        "(set --warmup_epochs to choose)"
    ]
    cut = {"epochs": 1, "warmup_epochs": 10}
    assert fit_warmup(config_from_dict(SupernetConfig, cut)).warmup_epochs == 0
    kept = config_from_dict(SupernetConfig, {"epochs": 3, "warmup_epochs": 3})
    assert fit_warmup(kept) is kept


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--overwrite", "True"], "sample does not read --overwrite (options of train;"),
        (
            ["sample", "--epochs", "5", "--data_dir", "/nonexistent"],
            "sample does not read --data_dir, --epochs (options of train;",
        ),
        (["train", "--num_samples", "3"], "train does not read --num_samples (options of sample;"),
    ],
    ids=["sample --overwrite", "sample --epochs --data_dir", "train --num_samples"],
)
def test_a_flag_the_mode_does_not_read_is_refused_in_one_line(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        supernet_main_file.main(["--train_or_sample", *argv])
    text = str(exit_info.value.code)
    assert text.startswith(f"error: --train_or_sample {message}") and "\n" not in text, text
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing sampled
    # a preset's train fields are no flags: sample reads the smoke preset's --log_dir
    with pytest.raises(SystemExit, match="no search run under runs/supernet_smoke"):
        supernet_main_file.main(["--train_or_sample", "sample", "--preset", "smoke"])


def test_both_scripts_leave_a_missing_cifar10_undownloaded():
    assert ArchTrainConfig().download is False and SupernetConfig().download is False
    assert ArchTrainConfig().data_dir == SupernetConfig().data_dir


def _thetas_run(folder: Path, winner: int, space: str = "tiny") -> Path:
    """A search run folder as `train` leaves it after 3 epochs: op ``winner`` in every layer."""
    from fbnet_building_blocks.search_space import CANDIDATE_OPS, get_search_space

    folder.mkdir(parents=True)
    row = [1.0 if j == winner else 0.0 for j in range(len(CANDIDATE_OPS))]
    thetas = [row] * get_search_space(space).num_layers
    state = {"thetas": thetas, "candidate_ops": list(CANDIDATE_OPS), "search_space": space}
    (folder / "thetas.json").write_text(json.dumps({**state, "epoch": 2}))
    return folder


def test_sample_takes_the_latest_run_of_any_preset(tmp_path, monkeypatch, capsys):
    from fbnet_building_blocks.search_space import CANDIDATE_OPS

    monkeypatch.chdir(tmp_path)
    old = _thetas_run(tmp_path / "runs" / "supernet" / "old", winner=0)
    new = _thetas_run(tmp_path / "runs" / "supernet_smoke" / "new", winner=8)
    os.utime(old / "thetas.json", (1_000_000, 1_000_000))
    values = {"train_or_sample": "sample", "arch_dir": str(tmp_path / "archs")}
    (record,) = run_sampling(config_from_dict(SupernetConfig, {**values, "architecture_name": "a"}))
    assert record["run"] == str(Path("runs/supernet_smoke/new"))
    assert record["ops"] == [CANDIDATE_OPS[8]] * 4
    assert capsys.readouterr().err.splitlines()[0] == (
        f"sampling {Path('runs/supernet_smoke/new')} (the newest search under runs, a smoke or "
        "test run: no real search is there): thetas after epoch 3, search space tiny"
    )
    # an explicit --log_dir still means that folder only
    explicit = {**values, "architecture_name": "b", "log_dir": str(old.parent)}
    (record,) = run_sampling(config_from_dict(SupernetConfig, explicit))
    assert record["run"] == str(old) and record["ops"] == [CANDIDATE_OPS[0]] * 4
    assert new.is_dir()


def test_sample_prefers_a_real_search_to_newer_smoke_runs_unless_one_is_named(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    real = _thetas_run(tmp_path / "runs" / "supernet" / "real", winner=1, space="fbnet_cifar")
    (real / "config.json").write_text(json.dumps({"dataset": "cifar10"}))
    os.utime(real / "thetas.json", (1_000_000, 1_000_000))
    _thetas_run(tmp_path / "runs" / "supernet_smoke" / "smoke", winner=8)
    fake = _thetas_run(tmp_path / "runs" / "supernet" / "fake", winner=8, space="fbnet_cifar")
    (fake / "config.json").write_text(json.dumps({"dataset": "fake"}))  # a test proxy's data
    values = {"train_or_sample": "sample", "arch_dir": str(tmp_path / "archs")}
    (record,) = run_sampling(config_from_dict(SupernetConfig, {**values, "architecture_name": "a"}))
    assert record["run"] == str(Path("runs/supernet/real")) and len(record["ops"]) == 22
    assert capsys.readouterr().err.splitlines()[0] == (
        f"sampling {Path('runs/supernet/real')} (the newest real search under runs): thetas after "
        "epoch 3, search space fbnet_cifar"
    )
    named = {
        **values,
        "architecture_name": "b",
        "log_dir": "runs/supernet_smoke",
        "run_name": "smoke",
    }
    (record,) = run_sampling(config_from_dict(SupernetConfig, named))
    assert record["run"] == str(Path("runs/supernet_smoke/smoke")) and len(record["ops"]) == 4
    assert capsys.readouterr().err.startswith(
        f"sampling {Path('runs/supernet_smoke/smoke')} (--run_name)"
    )


# ---------------------------------------------------------------- the README's smoke commands
def readme_smoke_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The commands of the fenced block that follows the ``<!-- smoke: ... -->`` marker."""
    lines = readme.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(SMOKE_MARKER))
    fence = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    commands, current = [], ""
    for line in lines[fence + 1 : end]:
        line = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        current += line.rstrip("\\").strip() + " " if line else ""
        if line and not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def _copy_of_the_repository(dest: Path) -> Path:
    """The code as a clean clone has it (packages and entry scripts), without runs or data."""
    for path in REPO.iterdir():
        if path.is_dir() and (path / "__init__.py").is_file():
            shutil.copytree(path, dest / path.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.suffix == ".py":
            shutil.copy2(path, dest / path.name)
    return dest


def _run_readme_commands(commands: list[str], cwd: Path) -> list[str]:
    """Run each command as printed; returns each one's last stdout line ("" when it prints none)."""
    last_lines = []
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "python", command
        proc = _python(argv[1:], cwd)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr and "CUDA_HOME" not in proc.stderr, command
        last_lines.append((proc.stdout.strip().splitlines() or [""])[-1])
    return last_lines


def test_readme_smoke_block_is_the_whole_pipeline():
    commands = readme_smoke_commands()
    assert [c.split()[1:4:2] for c in commands[:2]] == [
        ["supernet_main_file.py", "train"],
        ["supernet_main_file.py", "sample"],
    ]
    assert commands[2].startswith("python architecture_main_file.py --architecture_name")
    assert "--eval_only --checkpoint" in commands[3]


def test_readme_smoke_search_and_sample_run_as_printed(tmp_path, monkeypatch, capsys):
    """The first two commands: `sample` finds the run `train --preset smoke` wrote, no other flag.

    In this process, from an empty folder (the slow test below runs all four as new processes in a
    copy of the repository)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "FBNET_ARCH_DIR", str(tmp_path / "sampled_architectures")
    )  # the default's place
    lines = []
    for command in readme_smoke_commands()[:2]:
        argv = shlex.split(command)
        assert argv[:2] == ["python", "supernet_main_file.py"], command
        supernet_main_file.main(argv[2:])
        lines.append(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads(lines[1])
    assert record["run"].startswith(str(Path("runs") / "supernet_smoke"))
    assert len(record["ops"]) == 4 and (tmp_path / "sampled_architectures").is_dir()


@pytest.mark.slow
def test_readme_smoke_commands_run_as_printed(tmp_path):
    """All of them: search, sample, retrain, evaluate (half a minute on 2 cores)."""
    *_, sample, retrain, evaluate = _run_readme_commands(
        readme_smoke_commands(), _copy_of_the_repository(tmp_path)
    )
    name = json.loads(sample)["name"]
    trained, evaluated = json.loads(retrain), json.loads(evaluate)
    assert trained["architecture"] == evaluated["architecture"] == name
    assert evaluated["final_top1"] == trained["best_top1"]
