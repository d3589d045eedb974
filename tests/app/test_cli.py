"""The command line's mistakes (`tripletjax.app.cli`): unknown flags, config files and overrides,
the workdir; each one line `error: ...` (and maybe `hint: ...`), exit status 2, no traceback.

The cases run `python -m tripletjax.main` in a subprocess. Config values, data and arguments
that main checks itself: `tests/test_main.py`.
"""

from __future__ import annotations

import textwrap

from tests.subprocesses import run_main, run_python, user_error_lines


def test_missing_config_file():
  line, hint = user_error_lines(run_main("--config=configs/nope.py"))
  assert line == "error: --config=configs/nope.py: no such config file"
  assert hint is not None and "digits.py" in hint


def test_config_file_that_does_not_load_names_the_file_and_line(tmp_path):
  # One subprocess for the three ways a config file fails to load: main reports the first
  # and `cli.load_config_file` (what main calls to diagnose it) the others.
  syntax = tmp_path / "syntax.py"
  syntax.write_text("from tripletjax.app.config import defaults\n\ndef get_config(:\n  pass\n")
  line, hint = user_error_lines(run_main(f"--config={syntax}"))
  assert line == f"error: --config={syntax}: {syntax}, line 3: invalid syntax"
  assert hint is None
  no_function = tmp_path / "no_function.py"
  no_function.write_text("config = None\n")
  raises = tmp_path / "raises.py"
  raises.write_text("def get_config():\n  sizes = {}\n  return sizes['batch']\n")
  result = run_python("-c", textwrap.dedent(f"""
      from tripletjax.app import cli, errors
      for path in ({str(no_function)!r}, {str(raises)!r}):
        try:
          cli.load_config_file(path)
        except errors.ConfigError as error:
          print(error)
  """))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == [
      f"--config={no_function}: {no_function} defines no get_config() function",
      f"--config={raises}: {raises}, line 3: KeyError: 'batch'"]


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


def test_config_override_typo_is_an_error():
  # The command line goes through ml_collections' config flags: an unknown key fails.
  result = run_main("--config=configs/digits.py", "--config.loss.margn=0.2",
                    "--workdir=/nonexistent/never-written")
  assert result.returncode != 0
  assert "margn" in result.stderr


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / "file").write_text("")
  line, _ = user_error_lines(run_main("--config=configs/digits.py",
                                      f"--workdir={tmp_path / 'file'}"))
  assert line == f"error: --workdir={tmp_path / 'file'}: exists and is not a folder"
  line, _ = user_error_lines(run_main("--config=configs/digits.py",
                                      f"--workdir={tmp_path / 'file' / 'run'}"))
  assert line.startswith(f"error: --workdir={tmp_path / 'file' / 'run'}: cannot create it")


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
  result = run_python("-c", script, timeout=60)
  assert result.returncode == 2
  assert result.stderr == "error: the message\nhint: the hint\n"
