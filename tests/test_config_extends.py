"""Config inheritance: `extends: other.yaml` merges the named config under this one, then validates as usual."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.configfile import load_config, resolve_extends
from harness.errors import UserError
from tests.conftest import ROOT, SMOKE


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_child_overrides_mappings_key_by_key_and_replaces_lists(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", f"extends: {SMOKE}\nexperiment: child\nbudgets: [40]\n"
                  "search: {num_samples: 5}\n")
    cfg, base = load_config(child), load_config(SMOKE)
    assert cfg.experiment == "child" and cfg.budgets == [40]
    assert cfg.search.num_samples == 5 and cfg.search.reruns == base.search.reruns  # merged, not replaced
    assert cfg.defenses == base.defenses and cfg.model == base.model


def test_a_config_written_flat_and_one_written_with_extends_have_one_hash(tmp_path: Path) -> None:
    child = write(tmp_path / "same.yaml", f"extends: {SMOKE}\n")
    assert load_config(child).content_hash() == load_config(SMOKE).content_hash()


def test_parent_path_is_relative_to_the_child(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", SMOKE.read_text())
    child = write(tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\nseeds: [7]\n")
    assert load_config(child).seeds == [7]


@pytest.mark.parametrize("text, message", [
    ("extends: missing.yaml\n", "extends: 'missing.yaml' not found"),
    ("extends: [a, b]\n", "extends: expected the path of another config file"),
    ("extends: loop.yaml\n", "configs extend each other in a cycle"),
])
def test_bad_extends_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "loop.yaml", text)
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_unknown_keys_in_a_child_are_still_refused(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", f"extends: {SMOKE}\nsearch: {{num_smaples: 5}}\n")
    with pytest.raises(UserError, match="unknown field 'search.num_smaples'.*did you mean 'num_samples'"):
        load_config(child)


def test_shipped_diagnostics_extend_the_reproduction() -> None:
    """They list only what differs (the reproduction's blocks are not copied into each)."""
    diagnostics = sorted((ROOT / "configs").glob("reproduce-*.yaml"))
    for path in diagnostics:
        if path.name == "reproduce-short-attack.yaml":
            continue  # the former reproduction: a base itself
        raw = path.read_text()
        [parent] = re.findall(r"^extends: (\S+)$", raw, re.MULTILINE) or [None]
        # the reproduction itself or another shipped diagnostic (seeds 4-5 of the strong attacks extend seed 3's)
        assert parent in {"reproduce.yaml"} | {other.name for other in diagnostics if other != path}, path.name
        assert "source: standin" not in raw, f"{path.name} copies the reproduction's data block"
        assert resolve_extends(path)["defenses"], path.name
