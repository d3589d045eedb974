"""Bad inputs fail fast with one clear line: config values, data files, flags, library inputs.

The command-line cases run `python -m tripletjax.main` in a subprocess and fail before any
training: exit status 2, one `error: ...` line (and maybe `hint: ...`), no traceback.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from tripletjax.app.data import datasets
from tripletjax.app.config import defaults
from tripletjax.app import errors
from tripletjax import losses
from tripletjax.app.config import checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
  # cwd = the repository: `python -m` then imports this checkout's package.
  return subprocess.run([sys.executable, "-m", "tripletjax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120)


def user_error_lines(result: subprocess.CompletedProcess) -> tuple[str, str | None]:
  """The `error:` line and the `hint:` line (or None) of a run that failed as a user error."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  error_lines = [line for line in lines if line.startswith("error: ")]
  assert len(error_lines) == 1, result.stderr
  # The error is the last line, or the one before its hint.
  tail = lines[lines.index(error_lines[0]):]
  assert len(tail) == 1 or (len(tail) == 2 and tail[1].startswith("hint: ")), result.stderr
  return tail[0], tail[1] if len(tail) == 2 else None


def idx_bytes(array: np.ndarray, num_dims: int | None = None) -> bytes:
  """A uint8 IDX file; `num_dims` overrides the number of dimensions in the header."""
  header = struct.pack(">HBB", 0, 0x08, array.ndim if num_dims is None else num_dims)
  return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(">u1").tobytes()


def write_mnist_dir(folder, num_train=20, num_test=10) -> None:
  rng = np.random.default_rng(0)
  for name, count in (("train", num_train), ("t10k", num_test)):
    images = rng.integers(0, 256, (count, 8, 8), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    (folder / f"{name}-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (folder / f"{name}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


# --- config values ----------------------------------------------------------------------------


def config_with(key: str, value):
  config = defaults.get_config()
  *sections, name = key.split(".")
  target = config
  for section in sections:
    target = target[section]
  target[name] = value
  return config


@pytest.mark.parametrize("key, value, allowed", [
    ("model.embedding_dim", 0, "integer >= 1"),
    ("batch.batch_size", 0, "integer >= 1"),
    ("batch.classes_per_batch", 0, "integer >= 1"),
    ("batch.samples_per_class", -2, "integer >= 1"),
    ("num_epochs", 0, "integer >= 1"),
    ("log_every_steps", 0, "integer >= 1"),
    ("eval_every_epochs", 0, "integer >= 1"),
    ("checkpoint_every_epochs", 0, "integer >= 1"),
    ("model.forward_chunks", 0, "integer >= 1"),
    ("data.max_train", 0, "integer >= 1 or None"),
    ("data.max_test", -1, "integer >= 1 or None"),
    ("data.max_shift", -1, "integer >= 0"),
    ("export.projector_max_points", 0, "integer >= 1"),
    ("seed", -1, "integer in [0, 2147483648)"),
    ("optimizer.learning_rate", 0.0, "finite number > 0"),
    ("optimizer.learning_rate", float("nan"), "finite number > 0"),
    ("optimizer.learning_rate", float("inf"), "finite number > 0"),
    ("loss.margin", -0.1, "finite number >= 0"),
    ("loss.margin", float("inf"), "finite number >= 0"),
    ("model.dropout_rate", 1.0, "number in [0, 1) or None"),
    ("optimizer.weight_decay", -1e-4, "finite number >= 0"),
    ("optimizer.momentum", 1.5, "number in [0, 1)"),
    ("optimizer.warmup_steps", -1, "integer >= 0"),
    ("optimizer.grad_clip_norm", -1.0, "finite number >= 0"),
    ("loss.name", "semi_hard", "one of 'batch_all', 'contrastive', 'hard', 'semihard'"),
    ("loss.metric", "cosine", "one of 'angular', 'l2', 'squared_l2'"),
    ("loss.mining_scope", "globl", "one of 'global', 'local', 'replicated'"),
    ("model.name", "vgg16", "one of 'hsu_cnn'"),
    ("optimizer.name", "lamb", "one of 'adam', 'adamw', 'sgd'"),
    ("optimizer.schedule", "linear", "one of 'constant', 'cosine', 'warmup_cosine'"),
    ("batch.sampler", "random", "one of 'balanced', 'shuffled'"),
    ("data.augment", "rotate", "one of 'flip'"),
    ("data.name", "imagenet", "one of digits, fashion_mnist, mnist, tfds:<name>"),
    ("data.name", "tfds:", "one of digits, fashion_mnist, mnist, tfds:<name>"),
    ("model.width", 8, "model 'tfa_cnn' has no such option"),
    ("model.forward_chunks", 3, "must divide the batch size per device"),
    ("batch.batch_size", 100, "must equal classes_per_batch x samples_per_class"),
])
def test_bad_config_value_is_one_line_naming_key_value_and_what_is_allowed(key, value, allowed):
  config = config_with(key, value)
  if key == "batch.batch_size" and value == 100:
    config.batch.sampler = "balanced"
  with pytest.raises(errors.ConfigError) as error:
    checks.check_config(config)
  message = str(error.value)
  assert message.startswith(f"config.{key}={value!r}: "), message
  assert allowed in message and "\n" not in message
  assert isinstance(error.value, ValueError)  # What callers caught before.


@pytest.mark.parametrize("name", sorted(losses.MINED_LOSSES))
def test_every_loss_takes_every_mining_scope(name):
  for scope in ("global", "local", "replicated"):
    config = config_with("loss.mining_scope", scope)
    config.loss.name = name
    checks.check_config(config)


def test_misspelt_name_gets_a_did_you_mean_hint():
  with pytest.raises(errors.ConfigError) as error:
    checks.check_config(config_with("loss.name", "semihrad"))
  assert error.value.hint == "did you mean 'semihard'?"


def test_unknown_key_in_a_config_file_is_an_error():
  config = defaults.get_config()
  config.loss.margn = 0.2  # What a typo in a config file does: a new key, silently unused.
  with pytest.raises(errors.ConfigError, match=r"config\.loss\.margn is not a config key"):
    checks.check_config(config)


@pytest.mark.parametrize("name", ["digits", "fashion_mnist", "mnist"])
def test_shipped_configs_pass(name):
  module = {}
  with open(os.path.join(REPO, "configs", f"{name}.py")) as f:
    exec(compile(f.read(), f"configs/{name}.py", "exec"), module)  # pylint: disable=exec-used
  checks.check_config(module["get_config"]())
  checks.check_config(defaults.get_config())


# --- data files --------------------------------------------------------------------------------


def test_labels_file_with_a_wrong_dimension_count_is_not_an_idx_file():
  # A labels file whose header says 3 dimensions: the "shape" runs into the labels, and the
  # size it implies overflowed int64 before (a negative number of bytes).
  content = idx_bytes(np.tile(np.array([9, 2, 1, 1], np.uint8), 2500), num_dims=3)
  with pytest.raises(errors.DataError) as error:
    datasets.parse_idx(content, "t10k-labels-idx1-ubyte")
  message = str(error.value)
  assert message.startswith("t10k-labels-idx1-ubyte: not an IDX file (inconsistent header")
  assert "-" not in message.split("needs")[1].split("bytes")[0]  # No negative size.


@pytest.mark.parametrize("content, why", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad IDX magic number 0x01000801"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "gzip-compressed: its name must end in .gz"),
    (b"PK\x03\x04" + bytes(20), "bad IDX magic number 0x504b0304"),
    (idx_bytes(np.zeros(3, np.uint8)) + b"\x00", "inconsistent header"),
], ids=["magic", "gzip", "zip", "too_long"])
def test_not_an_idx_file(content, why):
  with pytest.raises(errors.DataError) as error:
    datasets.parse_idx(content, "some/file")
  assert str(error.value).startswith("some/file: not an IDX file (") and why in str(error.value)


def test_truncated_idx_file_says_so():
  content = idx_bytes(np.zeros((4, 8, 8), np.uint8))
  with pytest.raises(errors.DataError, match="f: truncated IDX file, 100 bytes where shape "
                     r"\(4, 8, 8\) of uint8 needs 272"):
    datasets.parse_idx(content[:100], "f")


def test_unreadable_idx_path_is_a_data_error(tmp_path):
  with pytest.raises(errors.DataError, match="cannot read it"):
    datasets.read_idx(str(tmp_path))  # A folder.


def test_missing_data_is_a_user_error_and_still_a_file_not_found_error(tmp_path):
  with pytest.raises(errors.DataNotFoundError) as error:
    datasets.load_dataset("mnist", str(tmp_path / "absent"))
  assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, errors.UserError)
  with pytest.raises(errors.DataError, match="Unknown dataset 'imagenet'"):
    datasets.load_dataset("imagenet")


# --- library inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [
    np.array([2**40, 2**40 + 1, 1, 1]),  # int64 ids that int32 would wrap.
    [2**40, 1, 1, 2],                    # A Python list: NumPy makes it int64.
    np.array([2**33, 0, 0, 1], np.uint64),
    np.array([2**31, 1, 1, 2], np.uint32),
    np.array([-2**31 - 1, 1, 1, 2]),
], ids=["int64", "list", "uint64", "uint32", "negative"])
@pytest.mark.parametrize("name", sorted(losses.MINED_LOSSES))
def test_labels_beyond_int32_name_the_range(name, labels):
  embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  with pytest.raises(ValueError, match=r"labels must fit in int32 \[-2147483648, 2147483647\]"):
    losses.MINED_LOSSES[name](labels, embeddings)


def test_int64_labels_within_int32_are_fine():
  embeddings = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  wide = losses.triplet_semihard_loss(np.array([7, 7, 2**31 - 1, 2**31 - 1]), embeddings)
  narrow = losses.triplet_semihard_loss(np.array([0, 0, 1, 1], np.int32), embeddings)
  assert float(wide) == float(narrow)


@pytest.mark.parametrize("labels, embeddings, error, match", [
    (np.zeros((4, 1), np.int32), np.zeros((4, 3), np.float32), ValueError, r"labels.*\[B\]"),
    (np.zeros(4, np.int32), np.zeros(12, np.float32), ValueError, r"\[B, D\]"),
    (np.zeros(3, np.int32), np.zeros((4, 3), np.float32), ValueError, "batch size"),
    (np.zeros(4, np.float32), np.zeros((4, 3), np.float32), TypeError, "integer class ids"),
    (np.zeros(4, np.int32), np.zeros((4, 3), np.int32), TypeError, "floating-point"),
], ids=["labels_rank", "embeddings_rank", "batch", "float_labels", "int_embeddings"])
@pytest.mark.parametrize("name", sorted(losses.MINED_LOSSES))
def test_wrong_shapes_and_dtypes_are_named(name, labels, embeddings, error, match):
  with pytest.raises(error, match=match):
    losses.MINED_LOSSES[name](labels, jnp.asarray(embeddings))


# --- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1"])
def test_cpu_devices_below_one_is_an_error(value):
  line, _ = user_error_lines(run_main("--config=configs/digits.py", f"--cpu_devices={value}"))
  assert line == f"error: flag --cpu_devices={value}: {value} is not a positive integer"


def test_missing_config_file():
  line, hint = user_error_lines(run_main("--config=configs/nope.py"))
  assert line == "error: --config=configs/nope.py: no such config file"
  assert hint is not None and "digits.py" in hint


def test_missing_config_flag():
  line, _ = user_error_lines(run_main())
  assert "--config" in line


def test_mistyped_override_names_the_key_and_suggests_the_fix():
  line, hint = user_error_lines(run_main("--config=configs/digits.py", "--config.loss.margn=0.2"))
  assert line.startswith("error: --config.loss.margn=0.2: config.loss has no key 'margn'")
  assert hint == "hint: did you mean --config.loss.margin=0.2?"


def test_unknown_flag_and_bad_flag_value():
  line, _ = user_error_lines(run_main("--config=configs/digits.py", "--wrkdir=/tmp/x"))
  assert "Unknown command line flag 'wrkdir'" in line
  line, _ = user_error_lines(run_main("--config=configs/digits.py", "--config.num_epochs=ten"))
  assert line.startswith("error: flag --config.num_epochs=ten:")


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


def test_missing_data_dir(tmp_path):
  line, _ = user_error_lines(run_main(
      "--config=configs/mnist.py", f"--config.data.data_dir={tmp_path / 'absent'}",
      f"--workdir={tmp_path / 'run'}"))
  assert line.startswith(f"error: mnist: data_dir {tmp_path / 'absent'} is not a folder")


def test_bad_idx_file(tmp_path):
  data = tmp_path / "mnist"
  data.mkdir()
  write_mnist_dir(data)
  labels = data / "t10k-labels-idx1-ubyte"
  labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # 3 dimensions, not 1.
  line, _ = user_error_lines(run_main("--config=configs/mnist.py",
                                      f"--config.data.data_dir={data}",
                                      f"--workdir={tmp_path / 'run'}"))
  assert line.startswith(f"error: {labels}: not an IDX file (inconsistent header")


def test_truncated_gzip_idx_file(tmp_path):
  data = tmp_path / "mnist"
  data.mkdir()
  write_mnist_dir(data)
  images = data / "train-images-idx3-ubyte"
  compressed = gzip.compress(images.read_bytes())
  images.unlink()
  (data / "train-images-idx3-ubyte.gz").write_bytes(compressed[:len(compressed) // 2])
  line, _ = user_error_lines(run_main("--config=configs/mnist.py",
                                      f"--config.data.data_dir={data}",
                                      f"--workdir={tmp_path / 'run'}"))
  assert "train-images-idx3-ubyte.gz: corrupt or truncated gzip file" in line


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "file").write_text("")
  line, _ = user_error_lines(run_main("--config=configs/digits.py",
                                      f"--workdir={tmp_path / 'file'}"))
  assert line == f"error: --workdir={tmp_path / 'file'}: exists and is not a folder"
  line, _ = user_error_lines(run_main("--config=configs/digits.py",
                                      f"--workdir={tmp_path / 'file' / 'run'}"))
  assert line.startswith(f"error: --workdir={tmp_path / 'file' / 'run'}: cannot create it")


def test_positional_argument_and_process_flags():
  line, _ = user_error_lines(run_main("--config=configs/digits.py", "runs/x"))
  assert line.startswith("error: unexpected arguments ['runs/x']")
  line, _ = user_error_lines(run_main("--config=configs/digits.py", "--process_id=1"))
  assert line == "error: --num_processes and --process_id need --coordinator_address"


def test_nothing_printed_after_the_error_line():
  # Background threads and exit handlers (a checkpointer's, asyncio's) write nothing after it.
  script = textwrap.dedent("""
      import atexit, sys, threading, time
      from tripletjax.app import cli
      from tripletjax.app import errors
      atexit.register(lambda: print("noise from an exit handler", file=sys.stderr))
      def late():
        time.sleep(0.2)
        print("noise from a thread", file=sys.stderr, flush=True)
      threading.Thread(target=late).start()
      cli.exit_with_user_error(errors.WorkdirError("the message", hint="the hint"))
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr == "error: the message\nhint: the hint\n"
