"""Known harmless warnings and log lines are silenced by exact message and issuing module only: the
same text from another module, another text from the same module, and any other warning still show."""

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from omnimem_train.utils.warnings import KNOWN_LOG_LINES, KNOWN_WARNINGS, install_filters

ROOT = Path(__file__).resolve().parents[2]


def _shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        install_filters()
        warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)
    return bool(seen)


@pytest.mark.parametrize("message,category,module", KNOWN_WARNINGS)
def test_known_warning_is_silenced_only_from_its_module_and_only_exactly(message, category, module):
    assert not _shown(message, category, module)
    assert _shown(message, category, "omnimem_train.train.run")  # the same text elsewhere
    assert _shown(message, category, module + "_other")
    assert _shown(message + " (and more)", category, module)  # not a prefix match
    assert _shown("another " + message, category, module)
    assert _shown("Some other warning.", category, module)


def test_install_is_idempotent():
    with warnings.catch_warnings():
        install_filters()
        n = len(warnings.filters)
        install_filters()
        assert len(warnings.filters) == n


def test_known_log_line_is_dropped_and_others_kept(caplog):
    install_filters()
    for name, messages in KNOWN_LOG_LINES.items():
        with caplog.at_level(logging.WARNING, logger=name):
            logging.getLogger(name).warning(messages[0])
            logging.getLogger(name).warning("Something else about the card.")
            logging.getLogger(name + ".child").warning(messages[0])  # another logger: kept
        assert [r.getMessage() for r in caplog.records] == ["Something else about the card.", messages[0]]
        caplog.clear()


def test_repo_card_without_metadata_logs_nothing(caplog):
    from huggingface_hub import ModelCard

    install_filters()
    with caplog.at_level(logging.WARNING):
        ModelCard("# A card without a metadata block\n")
    assert not caplog.records


def test_cli_silences_the_real_source_and_still_shows_another_warning():
    """Through the command line's set-up: torch's own pin_memory warning (CPU) is gone, a warning
    the filters do not name is printed as `warning: ...`."""
    code = """
import warnings
from omnimem_train.commands.cli import _quiet_libraries
_quiet_libraries()
import torch
from torch.utils.data import DataLoader
if not torch.accelerator.is_available():
    iter(DataLoader([1, 2], pin_memory=True))
warnings.warn("a real problem")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "warning: a real problem" in out.stderr
    assert "pin_memory" not in out.stderr
