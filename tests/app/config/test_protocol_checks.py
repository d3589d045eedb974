"""Config checks of the protocol keys (data splits and images, eval, monitor), and the command
line's one-line error for a missing image folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tripletjax.app import errors
from tripletjax.app.config import checks
from tripletjax.app.config import defaults

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def config_with(**changes):
  config = defaults.get_config()
  for key, value in changes.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


@pytest.mark.parametrize("changes, key, allowed", [
    ({"data__class_split": "halves"}, "data.class_split", "must be one of none, half, "
     "<first>:<last>"),
    ({"data__class_split": "9:2"}, "data.class_split", "first class 9 is after last class 2"),
    ({"data__validation_fraction": 1.0}, "data.validation_fraction",
     "must be a number in [0, 1)"),
    ({"data__augment": "crop_flip"}, "data.augment",
     "must be one of 'flip', 'flip_shift', 'none', 'shift'"),
    ({"data__name": "folder:/data/cub", "data__augment": "shift"}, "data.augment",
     "must be one of 'crop', 'crop_flip', 'flip', 'none'"),
    ({"data__image_channels": 2}, "data.image_channels", "must be 1 (grey) or 3 (RGB)"),
    ({"data__eval_resize": 200}, "data.eval_resize", "must be at least data.image_size=224"),
    ({"data__crop_scale": (0.5, 0.2)}, "data.crop_scale", "0 < low <= high <= 1"),
    ({"data__crop_ratio": (0.0, 1.0)}, "data.crop_ratio", "0 < low <= high"),
    ({"data__name": "folder:/data/cub", "data__image_channels": 1,
      "data__normalize": "imagenet"}, "data.normalize", "needs data.image_channels=3"),
    ({"data__unreadable": "ignore"}, "data.unreadable", "must be one of 'error', 'skip'"),
    ({"data__decode_workers": -1}, "data.decode_workers", "must be an integer >= 0"),
    ({"data__prefetch_batches": 0}, "data.prefetch_batches", "must be an integer >= 1"),
    ({"eval__recall_ks": ()}, "eval.recall_ks", "must be a non-empty tuple of integers >= 1"),
    ({"eval__recall_ks": (0, 1)}, "eval.recall_ks", "must be a non-empty tuple"),
    ({"eval__backend": "annoy"}, "eval.backend", "must be one of 'auto', 'faiss', 'numpy'"),
    ({"eval__faiss_min_size": 0}, "eval.faiss_min_size", "must be an integer >= 1"),
    ({"monitor__patience_steps": 0}, "monitor.patience_steps", "must be an integer >= 1"),
])
def test_bad_protocol_values_are_one_line_errors(changes, key, allowed):
  with pytest.raises(errors.ConfigError) as caught:
    checks.check_config(config_with(**changes), num_devices=1)
  message = str(caught.value)
  assert message.startswith(f"config.{key}=") and allowed in message, message
  assert "\n" not in message


def test_good_protocol_values_pass():
  checks.check_config(config_with(data__class_split="0:4", data__validation_fraction=0.2,
                                  data__name="folder:/data/cub", data__augment="crop_flip",
                                  data__crop_scale=(0.08, 1.0), eval__recall_ks=(1, 10),
                                  eval__backend="numpy"), num_devices=1)


@pytest.mark.slow
def test_a_missing_image_folder_is_one_line_and_exit_status_2(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "tripletjax.main", "--config=configs/cub200.py",
       f"--config.data.name=folder:{tmp_path}/no/such/folder", f"--workdir={tmp_path}/run",
       "--cpu_devices=1"], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[0].startswith(f"error: folder:{tmp_path}/no/such/folder: no such folder")
  assert len(lines) == 1 and "Traceback" not in result.stderr
