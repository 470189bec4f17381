"""Build a second Accelerator in the same process as if the process were fresh.

accelerate keeps its process, precision and accumulation settings in process-wide singletons and
refuses an Accelerator whose settings differ from the first one's. A study worker runs many stages
in one process, each with its own settings, so it forgets them between stages. accelerate has no
public call for this; the one it uses in its own tests is wrapped here, and
tests/test_adapters.py fails if that call goes or stops working.
"""
from __future__ import annotations


def forget_accelerator_state() -> None:
    """Drop accelerate's process-wide state: the next Accelerator() takes its own settings."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
