"""The CLI frame: global flags, exit codes, JSON errors, start-up imports, completions."""

import os
import subprocess
import sys

import pytest

from adapterctl import __version__
from adapterctl.errors import EXIT_CODES
from tests.helpers import REPO, app_commands, invoke, run_cli, run_python

COMMANDS = app_commands()


def test_help_lists_commands_and_exit_codes():
    res = run_cli("--help")
    assert res.code == 0
    for cmd in COMMANDS:
        assert cmd in res.stdout
    for code in EXIT_CODES:
        assert f"{code}:" in res.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_help_has_examples(cmd):
    res = invoke(cmd, "--help")
    assert res.code == 0 and "Examples" in res.stdout and f"adapterctl {cmd}" in res.stdout
    assert "Exit codes" in res.stdout and "6 incompatible with the base" in res.stdout


def test_version():
    res = invoke("--version")
    assert res.code == 0 and res.stdout == f"adapterctl {__version__}\n"
    assert invoke("--json", "--version").json == {"ok": True, "version": __version__}


def test_usage_error_is_json_with_exit_2():
    res = invoke("--json", "inspect")
    assert res.code == 2
    assert res.json == {"ok": False, "error": {"type": "usage", "message": "Missing argument 'adapter'.",
                                               "hint": "Run 'adapterctl inspect --help' for usage and examples.",
                                               "exit_code": 2}}


def test_global_flags_anywhere(tmp_path):
    res = invoke("inspect", tmp_path / "missing", "--json")
    assert res.code == 3 and res.json["error"]["type"] == "not_found"


def test_unknown_option_is_usage_error_without_traceback():
    res = run_cli("inspect", "x", "--bogus")
    assert res.code == 2 and "No such option" in res.stderr and "Traceback" not in res.stderr


def test_ctrl_c_while_python_shuts_down_prints_no_traceback():
    """A Ctrl-C after the outcome is decided (CI caught one in torch's finalizers at exit) changes
    neither the exit code nor stderr. Here it lands in an exit handler registered before main,
    which therefore runs after every handler a library registers on the way."""
    code = (
        "import atexit, os, signal, time\n"
        "def late():\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(0.5)\n"
        "atexit.register(late)\n"
        "from adapterctl.cli.app import main\nmain(['--version'])\n"
    )
    proc = run_python(code)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"adapterctl {__version__}\n", "")


def test_ctrl_c_inside_a_callback_interrupts_the_command_without_a_traceback():
    """A Ctrl-C landing in a weak reference's callback (CI caught one in importlib's module-lock
    callback during a convert) was printed as "Exception ignored ... Traceback" and lost, so the
    command ran on. It interrupts the command instead: exit 130, "interrupted", no traceback."""
    code = (
        "import sys, time, weakref, typer.main\n"
        "get_command = typer.main.get_command\n"
        "def interrupted_in_a_callback(app):\n"
        "    def cb(_):\n        raise KeyboardInterrupt\n"
        "    obj = type('T', (), {})()\n    ref = weakref.ref(obj, cb)\n"
        "    del obj  # the callback runs here, where Python cannot raise its exception\n"
        "    time.sleep(5)  # the command's work, during which the Ctrl-C arrives again\n"
        "    return get_command(app)\n"
        "typer.main.get_command = interrupted_in_a_callback\n"
        "sys.argv = ['adapterctl', '--version']\n"
        "from adapterctl.cli.app import entry\nentry()\n"
    )
    proc = run_python(code)
    assert proc.returncode == 130, (proc.returncode, proc.stdout, proc.stderr)
    assert "interrupted" in proc.stderr and proc.stdout == "", proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


ENTRY = """
import atexit, sys, threading, time
{imports}
class Teardown:
    def __del__(self):
        sys.stderr.write("teardown\\n")
keep = Teardown()  # a module global: freed by the interpreter's teardown, if it runs
atexit.register(lambda: sys.stderr.write("exit handler\\n"))
{thread}
sys.argv = ["adapterctl", *{args!r}]
from adapterctl.cli.app import entry
entry()
"""
LATE_THREAD = (
    "threading.Thread(target=lambda: (time.sleep(0.3), sys.stderr.write('thread done\\n'))).start()"
)


@pytest.mark.parametrize("torch_loaded,thread,args,code,teardown", [
    (True, False, ["--version"], 0, False),
    (True, False, ["inspect", "no/such/adapter"], 3, False),
    (False, False, ["--version"], 0, True),
    (True, True, ["--version"], 0, True),
])
def test_the_process_ends_without_teardown_where_torch_is_loaded(torch_loaded, thread, args, code,
                                                                  teardown):
    """The entry point skips the interpreter's teardown once torch is loaded (0.3-0.4 s of
    unloading it), with the exit code kept and every exit handler run; without torch, or with a
    non-daemon thread still running (which the normal exit waits for), Python ends as usual."""
    script = ENTRY.format(imports="import torch" if torch_loaded else "",
                          thread=LATE_THREAD if thread else "", args=args)
    proc = run_python(script)
    assert proc.returncode == code, proc.stderr
    assert "exit handler" in proc.stderr and "Traceback" not in proc.stderr
    assert ("teardown" in proc.stderr) == teardown, proc.stderr
    assert ("thread done" in proc.stderr) == thread
    if code == 0:
        assert proc.stdout == f"adapterctl {__version__}\n"


def test_help_imports_no_heavy_module():
    code = (
        "import sys\nfrom adapterctl.cli.app import main\nsys.argv=['adapterctl','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy=[m for m in ('torch','transformers','peft','accelerate','bitsandbytes','numpy',"
        "'huggingface_hub') if m in sys.modules]\nassert not heavy, heavy\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr


def test_json_inspect_imports_only_what_it_uses(peft_adapter):
    """Start-up (issue 16): ``--json inspect`` builds only its own command, passes plain values
    past Typer's pydantic coercion and renders nothing with Rich."""
    ad = peft_adapter("llama", r=2, target_modules=["q_proj"])
    code = (
        "import sys\nfrom adapterctl.cli.app import main\n"
        f"sys.argv=['adapterctl','--json','inspect',{str(ad)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy=[m for m in ('torch','numpy','pydantic','rich','yaml','safetensors','huggingface_hub',"
        "'adapterctl.cli.merge','adapterctl.cli.generate') if m in sys.modules]\nassert not heavy, heavy\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert '"ok": true' in proc.stdout


def test_plain_values_still_coerced_like_typer():
    """typer_compat passes plain values through; anything else still meets Typer's own checks."""
    res = invoke("generate", "x", "--max-new-tokens", "many")
    assert res.code == 2 and "max-new-tokens" in res.stdout + res.stderr


def test_completions_are_current():
    from adapterctl.cli.completions import SHELLS, completion_script

    for shell, name in SHELLS.items():
        committed = (REPO / "completions" / name).read_text()
        assert committed == completion_script(shell), (
            f"completions/{name} is stale: run python -m adapterctl.cli.completions completions/")


def test_bash_completion_round_trip():
    env = {"COMP_WORDS": "adapterctl ins", "COMP_CWORD": "1", "_ADAPTERCTL_COMPLETE": "complete_bash"}
    res = run_cli(env=env)
    assert res.code == 0 and res.stdout.split() == ["inspect"]


def test_a_reader_that_goes_away_is_not_a_failure():
    """`adapterctl inspect X | head -1` under `set -o pipefail` must not fail the pipeline."""
    cmd = (f"set -o pipefail; {sys.executable} -m adapterctl inspect examples/upper-lora | head -1")
    proc = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("adapter") and "Traceback" not in proc.stderr


def test_hub_like_ids_that_the_hub_refuses_are_not_found_not_a_crash(tmp_path):
    for ref in ("foo/bar--baz", "foo/bar..baz"):
        res = invoke("--json", "inspect", ref)
        assert res.code == 3 and res.json["error"]["type"] == "not_found", res.stdout
