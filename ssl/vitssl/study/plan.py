"""The study's job graph: which stages a study still has to run, in which order, at what cost.

Every stage writes into <out>/runs/<objective>-s<seed>[-<mode>]; a finished pretraining or an
evaluated mode is skipped, so running the study again only does what is missing. A fine-tune,
linear probe or kNN evaluation comes after its pretraining. The shards are read through vitssl.data
(a local folder, a base URL, a shard URL list): the study runs on any `data.shards` a run takes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vitssl.config import ConfigError, PretrainConfig, load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.data import DataError
from vitssl.data.sources import local_path, source_manifest
from vitssl.engine.checkpoint import TRAINER_STATE, latest_checkpoint
from vitssl.study import stages
from vitssl.study.scheduler import Job

SCRATCH = "scratch"  # no pretraining: the fine-tune starts from random weights
MODES = ["finetune", "linear", "knn"]
FROZEN_EVAL_COST = 2.0  # seconds: linear probe or kNN


@dataclass
class StudyOptions:
    objectives: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    shards: str = "data/mnist012"
    configs: str = "configs/mnist012"
    out: str = "outputs/study"
    experiment: str = "mnist012-study"
    extra_data: bool = False
    pixel_baselines: bool = True
    pretrained_dir: str | None = None
    pretrain_override: list[str] = field(default_factory=list)
    finetune_override: list[str] = field(default_factory=list)


def objective_costs(config: Path) -> tuple[float, float]:
    """(pretraining, fine-tuning) milliseconds per training image of the config's objective, as its
    class in the objective registry gives them."""
    from vitssl.objectives import OBJECTIVES

    cfg = load_config(PretrainConfig, config, [])
    cls = OBJECTIVES[cfg.objective["name"]]
    return cls.study_pretrain_cost, cls.study_finetune_cost


def study_objectives(configs: Path) -> list[str]:
    """The objectives a study can run: scratch, and each <name>.yaml in `configs` whose objective is
    in the registry under that name."""
    from vitssl.objectives import OBJECTIVES

    return [SCRATCH] + sorted(p.stem for p in configs.glob("*.yaml") if p.stem in OBJECTIVES)


def eval_splits(shards: str) -> list[str]:
    """The evaluation splits the shards hold, among stages.EVAL_SPLITS."""
    try:
        present = source_manifest(shards, [])["splits"]
    except (DataError, OSError) as e:
        raise ConfigError(f"--shards {shards}: {e}; make the shards first: python -m data_prep mnist "
                          f"--val-per-class 100 --large-test-rest --unlabeled-rest --out {shards}") from None
    return [s for s in stages.EVAL_SPLITS if s in present]


def class_names(shards: str) -> list[str]:
    return source_manifest(shards, []).get("classes", [])


def seeds_protocol(shards: str) -> bool:
    """The seeds' MNIST 0/1/2 split (embedded digits, 100 train + 100 test a class): their numbers apply."""
    o = source_manifest(shards, []).get("options", {})
    return (o.get("source") == "embedded" and o.get("digits") == [0, 1, 2] and o.get("train_per_class") == 100
            and o.get("test_per_class") == 100 and o.get("seed") == 0)


def resolve_shards(shards: str) -> str:
    """A local folder as an absolute path (stages may run elsewhere); URLs as they are."""
    return str(Path(shards).resolve()) if local_path(shards) is not None else shards


def pretrain_done(config: Path, overrides: list[str]) -> bool:
    """A finished pretraining run is not relaunched: reopening its MLflow run would reset its end time."""
    cfg = load_config(PretrainConfig, config, overrides)
    last = latest_checkpoint(Path(cfg.run.resolved_output_dir()))
    if last is None:
        return False
    state = json.loads((last / TRAINER_STATE).read_text())
    return state["epoch"] >= cfg.run.epochs or (cfg.run.max_steps is not None and state["step"] >= cfg.run.max_steps)


def build_jobs(opts: StudyOptions, out: Path, common: list[str], splits: list[str], uri: str,
               parent: str) -> list[Job]:
    jobs: list[Job] = []
    configs = Path(opts.configs)
    finetune_yaml = str(configs / "finetune.yaml")
    shards = resolve_shards(opts.shards)
    engine_options = [f"finetune.eval_splits=[{','.join(splits)}]"]
    fig_off = ["run.figure_every=0"]  # the objectives' figures cost as much as the training steps here
    if (opts.pixel_baselines and "val" in splits
            and not (out / "runs" / "pixels_svm_rbf-s0" / "eval_metrics.json").is_file()):
        jobs.append(Job("pixel baselines", stages.pixel_baselines, dict(
            shards=shards, splits=splits, tracking_uri=uri, experiment=opts.experiment, parent_run_id=parent,
            seed=0, out=str(out / "runs"), class_names=class_names(shards)), cost=0.5))
    ft_cfg = load_config(FinetuneConfig, finetune_yaml, common + opts.finetune_override)
    ft_thousands = ft_cfg.run.epochs * stages.split_count(ft_cfg.data.shards, ft_cfg.data.split) / 1000
    variants = [("", "train")] + ([("extra", "unlabeled")] if opts.extra_data else [])
    pretrained_dir = Path(opts.pretrained_dir).resolve() if opts.pretrained_dir else out / "runs"
    for seed in opts.seeds:
        for objective in opts.objectives:
            for variant, split in variants:
                if objective == SCRATCH and variant:
                    continue
                tag = f"{objective}{'-' + variant if variant else ''}-s{seed}"
                after: tuple[str, ...] = ()
                pretrained = "none"
                finetune_cost = 0.9
                if objective != SCRATCH:
                    config = configs / f"{objective}.yaml"
                    if not config.is_file():
                        raise ConfigError(f"no pretrain config {config}")
                    pretrain_cost, finetune_cost = objective_costs(config)
                    overrides = common + [f"run.seed={seed}", f"run.output_dir={pretrained_dir}/{tag}", f"run.name={tag}",
                                          f"data.split={split}", *fig_off, *opts.pretrain_override]
                    if variant:
                        overrides.append("run.tags={variant: label-free extra data}")
                    pretrained = str(pretrained_dir / tag)
                    if pretrain_done(config, overrides):
                        print(f"[{tag}] pretrain already finished", flush=True)
                    else:
                        cfg = load_config(PretrainConfig, config, overrides)
                        count = stages.split_count(cfg.data.shards, split)
                        jobs.append(Job(f"{tag} pretrain", stages.pretrain, dict(
                            config=str(config.resolve()), overrides=overrides,
                            log=str(out / "logs" / f"{tag}-pretrain.log")),
                            cost=cfg.run.epochs * count / 1000 * pretrain_cost))
                        after = (f"{tag} pretrain",)
                for mode in opts.modes:
                    if (out / "runs" / f"{tag}-{mode}" / "eval_metrics.json").is_file():
                        print(f"[{tag}] {mode} already evaluated", flush=True)
                        continue
                    overrides = common + [f"run.seed={seed}", f"run.output_dir={out}/runs/{tag}-{mode}",
                                          f"run.name={tag}-{mode}", f"finetune.pretrained={pretrained}",
                                          f"finetune.mode={mode}", *engine_options, *fig_off]
                    if variant:
                        overrides.append("run.tags={variant: label-free extra data}")
                    jobs.append(Job(f"{tag} {mode}", stages.finetune, dict(
                        config=str(Path(finetune_yaml).resolve()), overrides=overrides + opts.finetune_override,
                        log=str(out / "logs" / f"{tag}-{mode}.log")), after=after,
                        cost=ft_thousands * finetune_cost if mode == "finetune" else FROZEN_EVAL_COST))
    return jobs
