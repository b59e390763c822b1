"""The README's config reference shows the code's defaults: a config without a key gets the value shown."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from fednas.config import StudyConfig, parse_config
from fednas.strategies import STRATEGIES
from search_spaces import get_search_space

README = Path(__file__).resolve().parents[1] / "README.md"


def _reference() -> dict:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Study config"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block, "no ```toml block under '## Study config'"
    return tomllib.loads(block.group(1))


def test_every_value_in_the_readme_block_is_the_code_default() -> None:
    ref = _reference()
    defaults = StudyConfig()
    checked = 0
    for section in ("study", "constraints", "data", "federation", "supernet"):
        code = dataclasses.asdict(getattr(defaults, section))
        for key, shown in ref[section].items():
            if isinstance(shown, dict):  # a strategy's option table: its registry defaults
                assert shown == {k: STRATEGIES[key].defaults()[k] for k in shown}, f"[{section}.{key}]"
                continue
            assert key in code, f"{section}.{key}: shown in the README but not a key"
            want = code[key]
            assert (list(want) if isinstance(want, tuple) else want) == shown, (
                f"{section}.{key}: README shows {shown!r}, the code's default is {want!r}")
            checked += 1
    assert ref["objectives"] == defaults.objectives
    space = ref["space"]
    assert space.pop("name") == defaults.space.name
    space.pop("labels")  # examples of overrides, not defaults
    family = get_search_space(defaults.space.name, {})
    for key, shown in space.items():
        want = getattr(family, key)
        assert (list(want) if isinstance(want, tuple) else want) == shown, f"space.{key}: {shown!r} vs {want!r}"
        checked += 1
    assert checked >= 50


def test_the_readme_block_is_a_valid_config() -> None:
    config = parse_config(_reference())
    assert config.study.trials == StudyConfig().study.trials
