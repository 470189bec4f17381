"""docs/extending.md's examples run as written: a new encoder and a new objective register, validate
their config sections and train; a new data source is read by the loaders."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from vitssl.config import ConfigError, PretrainConfig, build_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.models import ENCODERS, encoder_export, encoder_from_export
from vitssl.objectives import OBJECTIVES, build_objective
from vitssl.objectives.base import ImageRows

DOC = Path(__file__).resolve().parents[1] / "docs/extending.md"


def example(name: str) -> types.ModuleType:
    """The code block after `<!-- example: name -->`, run as a module (so its classes pickle)."""
    found = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"docs/extending.md has no example {name!r}"
    module = types.ModuleType(f"extending_{name.replace(' ', '_')}")
    sys.modules[module.__name__] = module
    exec(compile(found.group(1), f"{DOC}:{name}", "exec"), module.__dict__)
    return module


@pytest.fixture
def registered():
    """Run an example; forget what it registered afterwards, so other tests see the shipped registries."""
    encoders, objectives, modules = dict(ENCODERS), dict(OBJECTIVES), set(sys.modules)
    yield example
    ENCODERS.clear(), ENCODERS.update(encoders)
    OBJECTIVES.clear(), OBJECTIVES.update(objectives)
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def pretrain(model: dict, objective: dict | None = None, **data) -> PretrainConfig:
    return build_config(PretrainConfig, {"model": model, "objective": objective or {"name": "simclr"},
                                         "data": data})


def test_a_new_encoder_is_one_file_validated_built_exported_and_trained(registered):
    mlp = registered("encoder")
    cfg = pretrain({"arch": "mlp", "width": 32, "depth": 2})
    assert isinstance(cfg.model, mlp.MLPOptions) and cfg.model.width == 32
    assert build_config(PretrainConfig, {"model": cfg.model.model_dump(), "objective": {"name": "simclr"}}) == cfg

    for model, data, message in [
        ({"arch": "mlp", "width": 3}, {}, "model: model.width (3) must be even"),
        ({"arch": "mlp", "width": 0}, {}, "model.width: Input should be greater than 0"),
        ({"arch": "mlp", "widht": 8}, {}, "model.widht: unknown key"),
        ({"arch": "mlp", "num_heads": 4}, {}, "model.num_heads applies to model.arch swin and vit, not mlp"),
        ({"arch": "mlp"}, {"image_size": 30}, "data.image_size (30) must be divisible by model.patch_size (7)"),
    ]:
        with pytest.raises(ConfigError) as err:
            pretrain(model, **data)
        assert message in str(err.value), (model, str(err.value))
    with pytest.raises(ConfigError, match="objective mae needs an encoder with masked_tokens; model.arch mlp has none"):
        build_objective(pretrain({"arch": "mlp"}, {"name": "mae"}))
    with pytest.raises(ConfigError, match="finetune.drop_path needs an encoder with residual blocks"):
        build_config(FinetuneConfig, {"model": {"arch": "mlp"}, "finetune": {"drop_path": 0.1}})

    torch.manual_seed(0)
    objective = build_objective(cfg)  # SimCLR on the new encoder
    assert isinstance(objective.encoder, mlp.MLP) and objective.encoder.embed_dim == 32
    transform = objective.sample_transform()
    samples = [transform({"image": torch.rand(1, 28, 28), "label": torch.tensor(0)}) for _ in range(8)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    loss, _ = objective(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in objective.encoder.parameters())

    export = encoder_export(objective.encoder)
    assert export["arch"] == "mlp" and export["model"] == cfg.model.model_dump()
    rebuilt = encoder_from_export(export)
    rebuilt.load_state_dict(export["state_dict"], strict=True)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x), objective.encoder(x))


def test_a_new_objective_is_one_file_its_loss_is_its_formula_and_falls(registered):
    denoise = registered("objective")
    model = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    with pytest.raises(ConfigError, match="objective.noise_sd: unknown key"):
        build_objective(pretrain(model, {"name": "denoise", "noise_sd": 0.2}))
    torch.manual_seed(0)
    objective = build_objective(pretrain(model, {"name": "denoise", "noise_std": 0.2}))
    assert isinstance(objective, denoise.Denoise)
    transform = objective.sample_transform()
    samples = [transform({"image": torch.rand(1, 28, 28)}) for _ in range(16)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    assert 0 < (batch["noisy"] - batch["image"]).abs().mean() < 0.2

    loss, metrics = objective(batch)
    direct = ((objective.decoder(objective.encoder(batch["noisy"])).view(16, 1, 28, 28) - batch["image"]) ** 2).mean()
    torch.testing.assert_close(loss, direct)
    assert metrics["loss_denoise"] == loss.detach()

    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    first = loss.item()
    for _ in range(20):
        loss, _ = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.8 * first

    figures = objective.figures(batch)
    assert list(figures) == ["denoise.png"] and isinstance(figures["denoise.png"], ImageRows)
    from vitssl.tracking.plots import close, draw

    close(draw(figures["denoise.png"]))


def test_a_new_data_source_is_written_as_shards_the_loaders_read(registered, tmp_path):
    from vitssl.data import load_split_tensors

    stripes = registered("data source")
    manifest = stripes.write_stripes(tmp_path / "stripes")
    assert {s: manifest["splits"][s]["count"] for s in manifest["splits"]} == {"train": 64, "test": 32}
    assert sorted(p.name for p in (tmp_path / "stripes").glob("*.tar")) == \
        ["test-000000.tar", "train-000000.tar", "train-000001.tar"]
    images, labels, index = load_split_tensors(tmp_path / "stripes", "train")
    assert images.shape == (64, 1, 28, 28) and labels.tolist() == [i % 2 for i in range(64)]
    rows_lit = (images[:, 0] == 1).all(dim=2).sum(dim=1)  # full white rows: horizontal stripes only
    assert (rows_lit[labels == 0] == 6).all() and (rows_lit[labels == 1] == 0).all()
