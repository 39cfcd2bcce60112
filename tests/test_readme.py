"""The README's example configuration is valid for the current schema."""

import re
import tomllib
from pathlib import Path

from ppaia import ExperimentConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_config_validates():
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.DOTALL)
    assert block, "README has no TOML example"
    config = ExperimentConfig.model_validate(tomllib.loads(block.group(1)))
    assert config.peers == 100 and config.ewc is not None and config.privacy is not None
