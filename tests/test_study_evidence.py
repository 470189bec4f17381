"""The study's configs cite only `val` for their choices: no comment names a test split, and every
comment that points to a round of the research log says which `val` figure it rests on."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIGS = sorted((ROOT / "configs/mnist012").glob("*.yaml"))
TEST_SPLIT = re.compile(r"\btest(_large)?\b", re.IGNORECASE)


def comments(text: str) -> list[tuple[int, str]]:
    return [(i, line.split("#", 1)[1]) for i, line in enumerate(text.splitlines(), 1) if "#" in line]


def problems(text: str) -> list[str]:
    found = []
    for line_no, comment in comments(text):
        if TEST_SPLIT.search(comment):
            found.append(f"line {line_no} cites a test split: {comment.strip()}")
        elif "round" in comment and "val" not in comment:
            found.append(f"line {line_no} cites a round without its val figure: {comment.strip()}")
    return found


@pytest.mark.parametrize("config", STUDY_CONFIGS, ids=lambda p: p.name)
def test_study_config_choices_cite_val_only(config: Path):
    assert problems(config.read_text()) == []


def test_the_check_catches_a_test_citation():
    assert problems("  epochs: 100   # kNN-10 test accuracy 0.94 vs 0.87 at 30\n")
    assert problems("  lr: 2e-3   # 98.0 on test_large (research log, third round)\n")
    assert problems("  lr: 2e-3   # 98.0 (BENCHMARKS.md, third round)\n")
    assert not problems("  lr: 2e-3   # val, 3 seeds: 97.56 vs 96.89 (docs/research-log.md, seventh round)\n")
