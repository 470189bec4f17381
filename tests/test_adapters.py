"""The few places that lean on another library beyond its documented API fail here when it changes."""
import pytest
from accelerate import Accelerator

from vitssl.engine.accelerator_reset import forget_accelerator_state


def test_a_second_accelerator_takes_its_own_settings_after_forgetting_the_first():
    forget_accelerator_state()
    try:
        Accelerator(gradient_accumulation_steps=2, mixed_precision="no", cpu=True)
        with pytest.raises(ValueError, match="already been initialized"):  # why the adapter exists
            Accelerator(gradient_accumulation_steps=1, mixed_precision="bf16", cpu=True)
        forget_accelerator_state()
        second = Accelerator(gradient_accumulation_steps=1, mixed_precision="bf16", cpu=True)
        assert (second.mixed_precision, second.gradient_accumulation_steps) == ("bf16", 1)
    finally:
        forget_accelerator_state()


def test_an_mlflow_dataset_description_holds_what_the_lineage_entity_is_made_of(tmp_path):
    """tracking.lineage builds the dataset entity from MetaDataset.to_dict()."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    d = MetaDataset(resolve_dataset_source(str(tmp_path)), name="digits-train", digest="abc").to_dict()
    assert {"name", "digest", "source", "source_type"} <= set(d)
    assert (d["name"], d["digest"]) == ("digits-train", "abc") and str(tmp_path) in d["source"]
