"""The model card (README.md) of an exported encoder, generated from what the run recorded: its config,
the data manifest (digest, counts), the MLflow run (hardware, evaluation metrics with 95% intervals).
The license is left for the user to choose."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vitssl.export.timm_layout import TimmModel
from vitssl.models import export_options

HARDWARE_TAGS = ("device", "world_size", "precision", "distributed_type", "torch")


@dataclass
class RunFacts:
    """What MLflow knows about the run that made the export (empty when unknown or unreachable)."""
    run_id: str | None = None
    experiment: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    evaluations: list[dict] = field(default_factory=list)  # downstream runs: mode, run id, metrics
    note: str | None = None  # why facts are missing


def run_facts(run_id: str | None, tracking_uri: str | None) -> RunFacts:
    """The run's tags and metrics, and the evaluation runs that used its encoder (vitssl.pretrain_run_id)."""
    if not run_id:
        return RunFacts(note="no MLflow run is recorded for this export")
    import mlflow

    from vitssl.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id).name
        children = client.search_runs([run.info.experiment_id],
                                      filter_string=f"tags.`vitssl.pretrain_run_id` = '{run_id}'", max_results=200)
    except Exception as e:  # another store, or none reachable: the card says so
        return RunFacts(run_id, note=f"run not readable in {uri} ({type(e).__name__}): metrics not included")
    evaluations = [{"mode": r.data.tags.get("vitssl.mode", "?"), "run_id": r.info.run_id,
                    "seed": r.data.tags.get("vitssl.seed", "?"), "metrics": r.data.metrics}
                   for r in children if r.info.status == "FINISHED"]
    return RunFacts(run_id, experiment, run.data.tags, run.data.metrics, evaluations)


def wilson(accuracy: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy measured on n images."""
    from scipy.stats import binomtest

    k = int(round(accuracy * n))
    ci = binomtest(k, int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def accuracy_rows(metrics: dict[str, float]) -> list[tuple[str, float, int, float, float]]:
    """(split, accuracy, n, low, high) for every `<split>_accuracy` with its `<split>_n`."""
    rows = []
    for name, value in sorted(metrics.items()):
        split = name.removesuffix("_accuracy")
        if name.endswith("_accuracy") and f"{split}_n" in metrics:
            n = metrics[f"{split}_n"]
            rows.append((split, value, int(n), *wilson(value, n)))
    return rows


def manifest_facts(config: dict) -> dict | None:
    """Dataset name, classes, per-split counts and the training split's content digest, when the shards'
    manifest is readable here."""
    from vitssl.data.manifest import load_manifest
    from vitssl.tracking.lineage import split_sha256

    data = config.get("data") or {}
    shards = data.get("shards")
    if not shards or not Path(shards).is_dir():
        return None
    try:
        manifest = load_manifest(shards)
        split = data.get("split", "train")
        digest = split_sha256(manifest, split, shards)
    except Exception:
        return None
    return {"dataset": manifest.get("dataset", Path(shards).name), "classes": manifest.get("classes", []),
            "counts": {s: v.get("count") for s, v in manifest.get("splits", {}).items()}, "split": split,
            "digest": digest}


def class_names(export: dict) -> list[str] | None:
    """A classifier's class names: the manifest's when they fit its head, else the config's."""
    if "head" not in export:
        return None
    n = export["head"]["weight"].shape[0]
    config = export.get("config") or {}
    facts = manifest_facts(config)
    if facts and len(facts["classes"]) == n:
        return [str(c) for c in facts["classes"]]
    names = (config.get("finetune") or {}).get("class_names")
    return list(names) if names and len(names) == n else [str(i) for i in range(n)]


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def model_card(export: dict, tm: TimmModel, facts: RunFacts) -> str:
    options, size, chans = export_options(export)
    config = export.get("config") or {}
    objective = config.get("objective") or {"name": export.get("objective", "unknown")}
    classifier = "head" in export
    kind = "image classifier" if classifier else "image encoder"
    name = (config.get("run") or {}).get("name", "vitssl-encoder")
    lines = ["---", "library_name: timm", "tags:", "- timm", "- vitssl", f"- {objective.get('name')}",
             f"pipeline_tag: {'image-classification' if classifier else 'image-feature-extraction'}",
             "# license: choose the license of these weights (and check the training data's terms)", "---", "",
             f"# {name}", "",
             f"A {options.arch} {kind} trained with vitssl "
             f"({'fine-tuned from a ' + str(export.get('pretrained_objective')) + ' encoder' if classifier else 'objective ' + str(objective.get('name'))}).",
             "", "## Use it", "", "```python", "import timm, torch",
             "model = timm.create_model('hf-hub:<user>/<repo>', pretrained=True).eval()  # or 'local-dir:<folder>'",
             f"x = torch.rand(1, {chans}, {size}, {size})"
             "  # pixels in [0, 1]: mean 0, std 1",
             f"y = model(x)  # {'logits' if classifier else 'the pooled embedding'}", "```", "",
             "## Architecture", "", f"timm `{tm.architecture}` with:", "", "```json",
             json.dumps(tm.model_args, indent=1), "```"]
    lines += ["", "## Training", ""]
    opts = ", ".join(f"{k}={v}" for k, v in objective.items() if k != "name")
    run = config.get("run") or {}
    lines += [f"- objective: {objective.get('name')}" + (f" ({opts})" if opts else ""),
              f"- epochs: {run.get('epochs', '?')}" + (f" (max_steps {run['max_steps']})" if run.get("max_steps") else ""),
              f"- optimiser: AdamW, {json.dumps(config.get('optim', {}))}"]
    if classifier:
        ft = {k: v for k, v in (config.get("finetune") or {}).items()
              if not k.startswith(("linear_", "knn_", "tsne", "eval_splits", "class_names"))}
        lines.append(f"- fine-tune: {json.dumps(ft)}")
    data = manifest_facts(config)
    if data:
        counts = ", ".join(f"{s} {c}" for s, c in data["counts"].items())
        lines += [f"- data: {data['dataset']}, classes {data['classes']}; images per split: {counts}",
                  f"- training split `{data['split']}` content digest (sha256 over its shards): `{data['digest']}`"]
    elif config.get("data"):
        lines.append(f"- data: {config['data'].get('shards')} (its manifest is not readable here)")
    hardware = {k: facts.tags[k] for k in HARDWARE_TAGS if k in facts.tags}
    if hardware:
        lines.append("- hardware: " + ", ".join(f"{k} {v}" for k, v in hardware.items()))
    lines += ["", "## Evaluation", ""]
    rows = [["run", "split", "accuracy", "95% interval (Wilson)", "images"]]
    for split, acc, n, lo, hi in accuracy_rows(facts.metrics):
        rows.append(["this run", split, f"{acc:.4f}", f"[{lo:.4f}, {hi:.4f}]", str(n)])
    for ev in facts.evaluations:
        for split, acc, n, lo, hi in accuracy_rows(ev["metrics"]):
            rows.append([f"{ev['mode']} (seed {ev['seed']}, run `{ev['run_id']}`)", split, f"{acc:.4f}",
                         f"[{lo:.4f}, {hi:.4f}]", str(n)])
    lines.append(_table(rows) if len(rows) > 1 else "No evaluation recorded in MLflow for this run yet.")
    lines += ["", "## Provenance", ""]
    if facts.run_id:
        lines.append(f"- MLflow run `{facts.run_id}`" + (f" (experiment `{facts.experiment}`)" if facts.experiment else ""))
        if (pre := facts.tags.get("vitssl.pretrain_run_id", "none")) != "none":
            lines.append(f"- started from the encoder of MLflow run `{pre}` "
                         f"({facts.tags.get('vitssl.pretrained_source', '')})")
        if commit := facts.tags.get("mlflow.source.git.commit"):
            lines.append(f"- code: git commit `{commit}`")
    if facts.note:
        lines.append(f"- {facts.note}")
    lines += ["", "## License", "", "Not set. Choose the license of these weights, consistent with the training "
              "data's terms, and put it in the `license:` field above before publishing.", ""]
    return "\n".join(lines)
