"""(f) Bad configs fail before any work, with a message naming the key."""
import subprocess
import sys
from pathlib import Path

import pytest

from vitssl.config import ConfigError, PretrainConfig, load_config
from vitssl.objectives import parse_options

ROOT = Path(__file__).resolve().parents[1]
MAE_YAML = ROOT / "configs/mnist012/mae.yaml"


def load(*overrides):
    cfg = load_config(PretrainConfig, MAE_YAML, list(overrides))
    parse_options(cfg)
    return cfg


def test_shipped_config_loads_and_overrides_apply():
    cfg = load("optim.lr=3e-4", "run.epochs=2", "objective.style=zero")
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.run.epochs == 2
    assert cfg.objective["style"] == "zero"


@pytest.mark.parametrize("override, expected", [
    ("optim.lrr=0.1", "optim.lrr: unknown key"),
    ("run.epochs=many", "run.epochs: Input should be a valid integer"),
    ("data.image_size=30", "data.image_size (30) must be divisible by model.patch_size (7)"),
    ("objective.mask_ratio=1.0", "objective.mask_ratio: Input should be less than 1"),
    ("objective.mask_ratio=0", "objective.mask_ratio: Input should be greater than 0"),
    ("objective.style=blur", "objective.style: Input should be 'drop', 'mask_token' or 'zero'"),
    ("objective.name=nope", "objective.name 'nope' is not one of"),
    ("objective.decoder_widht=3", "objective.decoder_widht: unknown key"),
    ("model.pos_embed=rope", "model.pos_embed: Input should be 'sincos' or 'learned'"),
    ("model.num_heads=5", "model.embed_dim (64) must be divisible by model.num_heads (5)"),
    ("run.precision=fp8", "run.precision: Input should be 'no', 'fp16' or 'bf16'"),
    ("optim", "must look like key.sub=value"),
])
def test_bad_config_names_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert expected in str(err.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(PretrainConfig, bad)


@pytest.mark.slow
def test_entry_point_rejects_bad_config_before_work(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "launch/pretrain.py"), "--config", str(MAE_YAML),
                          "optim.wd=1", f"run.output_dir={tmp_path}/run"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert "optim.wd: unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "mlflow.db").exists()


def shipped_configs() -> list[Path]:
    return sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_config_a_run_writes_loads_back_to_the_same_config(path, tmp_path):
    """A run writes to_yaml(cfg) beside its outputs and checkpoints: it must reproduce the run."""
    from vitssl.config import to_yaml
    from vitssl.config.finetune import FinetuneConfig
    from vitssl.config.load import read_yaml

    schema = FinetuneConfig if "finetune" in read_yaml(path) else PretrainConfig
    cfg = load_config(schema, path, [])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(schema, saved, []).model_dump() == cfg.model_dump()


def test_documented_precision_no_is_accepted_from_the_command_line_and_yaml(tmp_path):
    assert load("run.precision=no").run.precision == "no"
    yaml_file = tmp_path / "no.yaml"
    yaml_file.write_text("run:\n  precision: no\n")
    assert load_config(PretrainConfig, yaml_file, []).run.precision == "no"


@pytest.mark.parametrize("value", [".inf", "inf", "nan", "-.inf"])
def test_non_finite_learning_rate_is_one_error_naming_the_key(value):
    with pytest.raises(ConfigError, match="optim.lr: Input should be a finite number"):
        load(f"optim.lr={value}")
