"""`python -m tripletjax.main`: bad values, data and arguments end the run before any work with
one line (exit status 2, `error: ...` and maybe `hint: ...`, no traceback); several CPU devices
train.

Mistakes in the flags themselves (unknown flags, config files and overrides, the workdir):
`tests/app/test_cli.py`.
"""

from __future__ import annotations

import gzip
import json

import pytest

from tests.app.data.idx_files import write_idx_dataset
from tests.subprocesses import run_main, user_error_lines


@pytest.mark.parametrize("value", ["0", "-1"])
def test_cpu_devices_below_one_is_an_error(value):
  line, _ = user_error_lines(run_main("--config=configs/digits.py", f"--cpu_devices={value}"))
  assert line == f"error: flag --cpu_devices={value}: {value} is not a positive integer"


def test_unknown_loss_name(tmp_path):
  line, hint = user_error_lines(run_main("--config=configs/digits.py", "--config.loss.name=semi",
                                         f"--workdir={tmp_path / 'run'}"))
  assert line.startswith("error: config.loss.name='semi': must be one of 'batch_all'")
  assert hint == "hint: did you mean 'semihard'?"
  assert not (tmp_path / "run").exists()  # Checked before the workdir is created.


def test_bad_config_value_before_any_work(tmp_path):
  # Before: a ZeroDivisionError in the model's initializer.
  line, _ = user_error_lines(run_main("--config=configs/digits.py",
                                      "--config.model.embedding_dim=0",
                                      f"--workdir={tmp_path / 'run'}"))
  assert line == "error: config.model.embedding_dim=0: must be an integer >= 1."


def test_unknown_dataset_name(tmp_path):
  line, hint = user_error_lines(run_main("--config=configs/digits.py",
                                         "--config.data.name=mnst", f"--workdir={tmp_path}"))
  assert line.startswith("error: config.data.name='mnst': must be one of digits, fashion_mnist")
  assert hint == "hint: did you mean 'mnist'?"


@pytest.fixture
def mnist_files(tmp_path):
  """A folder holding the four MNIST IDX files (uncompressed; 20 and 10 small images)."""
  data = tmp_path / "mnist"
  data.mkdir()
  write_idx_dataset(data, compress=(False,) * 4, num_train=20, num_test=10)
  return data


def run_on_mnist_files(data, tmp_path):
  """`python -m tripletjax.main` on configs/mnist.py with the IDX files of the folder `data`."""
  return run_main("--config=configs/mnist.py", f"--config.data.data_dir={data}",
                  f"--workdir={tmp_path / 'run'}")


def test_missing_data_dir(tmp_path):
  line, _ = user_error_lines(run_on_mnist_files(tmp_path / "absent", tmp_path))
  assert line.startswith(f"error: mnist: data_dir {tmp_path / 'absent'} is not a folder")


def test_bad_idx_file(tmp_path, mnist_files):
  labels = mnist_files / "t10k-labels-idx1-ubyte"
  labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # 3 dimensions, not 1.
  line, _ = user_error_lines(run_on_mnist_files(mnist_files, tmp_path))
  assert line.startswith(f"error: {labels}: not an IDX file (inconsistent header")


def test_truncated_gzip_idx_file(tmp_path, mnist_files):
  images = mnist_files / "train-images-idx3-ubyte"
  compressed = gzip.compress(images.read_bytes())
  images.unlink()
  (mnist_files / "train-images-idx3-ubyte.gz").write_bytes(compressed[:len(compressed) // 2])
  line, _ = user_error_lines(run_on_mnist_files(mnist_files, tmp_path))
  assert "train-images-idx3-ubyte.gz: corrupt or truncated gzip file" in line


def test_positional_argument_and_process_flags():
  line, _ = user_error_lines(run_main("--config=configs/digits.py", "runs/x"))
  assert line.startswith("error: unexpected arguments ['runs/x']")
  line, _ = user_error_lines(run_main("--config=configs/digits.py", "--process_id=1"))
  assert line == "error: --num_processes and --process_id need --coordinator_address"


@pytest.mark.slow
def test_main_trains_on_several_cpu_devices(tmp_path):
  # The default on a CPU machine: one JAX device per core, the batch split between them and
  # the loss mined over the whole batch. (Host callbacks deadlock XLA:CPU collectives, so this
  # also checks that the trainer mines with lax.sort here.)
  result = run_main(
      "--config=configs/digits.py", "--cpu_devices=2", "--config.num_epochs=2",
      "--config.eval_every_epochs=1", "--config.quiet=True", "--config.data.augment=flip_shift",
      "--config.model.forward_chunks=2", f"--workdir={tmp_path / 'run'}", timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 2 cpu device(s)" in result.stdout
  final = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert 0.5 < final["precision_at_1"] < 1.0  # Two epochs: far above chance (0.1), no self-match.


def test_a_missing_image_folder(tmp_path):
  line, hint = user_error_lines(run_main(
      "--config=configs/cub200.py", f"--config.data.name=folder:{tmp_path}/no/such/folder",
      f"--workdir={tmp_path / 'run'}", "--cpu_devices=1"))
  assert line.startswith(f"error: folder:{tmp_path}/no/such/folder: no such folder or file")
  assert hint is None
