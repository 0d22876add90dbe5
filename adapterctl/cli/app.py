"""The Typer application: global flags, error handling and exit codes. Commands live one per
module in this package and import their heavy dependencies inside the command body."""

from __future__ import annotations

import _thread
import atexit
import os
import signal
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

import typer

from adapterctl import __version__
from adapterctl.cli import output as output_mod
from adapterctl.cli import typer_compat
from adapterctl.cli.output import Output, Settings
from adapterctl.errors import EXIT_CODES, AdapterctlError, Interrupted, UsageError

#: What click raises for a command line it cannot parse. Typer vendors click from 0.25 on (a private
#: module) and imports the real one before; its public BadParameter is a click UsageError in both,
#: so the base class is found through it rather than imported from either place.
if TYPE_CHECKING:  # the type checker reads the class where the installed Typer (>= 0.25) keeps it
    from typer._click.exceptions import ClickException
else:
    ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

typer_compat.install()  # plain values skip pydantic: a third of inspect's start-up

COMPLETE_VAR = "_ADAPTERCTL_COMPLETE"
GLOBAL_FLAGS = {"--json": "json", "--quiet": "quiet", "-q": "quiet", "--debug": "debug"}

EXIT_CODES_HELP = "\n".join(f"* **{code}**: {text}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="adapterctl",
    help=(
        "Manage LoRA adapters for causal language models: look inside them, try them on a base "
        "model, convert, merge and publish them.\n\n"
        "Global flags (allowed anywhere on the command line): **--json** prints exactly one JSON "
        "document on stdout (also on failure), **--quiet** silences logs and progress, **--debug** "
        "shows tracebacks."
    ),
    epilog=(
        "**Examples**\n\n"
        "* `adapterctl inspect ./my-lora`\n"
        "* `adapterctl --json inspect ./my-lora --base ./base-model`\n"
        "* `adapterctl merge ./base-model ./my-lora --output ./merged`\n\n"
        "**Exit codes**\n\n" + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion; also registers Typer's scripts
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:  # through the output helper: with --json, one document like every command's
        output_mod.get_output().result(
            {"version": __version__}, lambda console: console.print(f"adapterctl {__version__}")
        )
        raise typer.Exit(0)


@app.callback()
def root(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No logs or progress on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Registered for --help; the flags themselves are taken off argv by :func:`main`."""


#: Every command, one module of this package each, in the order ``--help`` lists them.
COMMANDS = (
    "inspect",
    "check",
    "attach",
    "convert",
    "merge",
    "push",
    "generate",
    "eval",
    "serve",
    "verify",
    "deploy",
    "undeploy",
    "ls",
)
_registered: set[str] = set()


def _register_commands(args: list[str]) -> None:
    """Register the command ``args`` names, or all of them (``--help``, completion, a typo): a run
    of one command neither imports nor builds the other eight (start-up, issue 16)."""
    import importlib

    named = next((a for a in args if not a.startswith("-")), None)
    wanted = [named] if named in COMMANDS and COMPLETE_VAR not in os.environ else COMMANDS
    for name in wanted:
        if name not in _registered:
            importlib.import_module(f"adapterctl.cli.{name}").register(app)
            _registered.add(name)
    app.registered_commands.sort(key=lambda info: COMMANDS.index(info.name))


def split_global_flags(argv: list[str]) -> tuple[Settings, list[str]]:
    """Take --json/--quiet/--debug from anywhere before a ``--`` so scripts may put them anywhere."""
    settings, rest = Settings(), []
    for i, arg in enumerate(argv):
        if arg == "--":
            rest += argv[i:]
            break
        if arg in GLOBAL_FLAGS:
            setattr(settings, GLOBAL_FLAGS[arg], True)
        else:
            rest.append(arg)
    return settings, rest


def _usage_error(err: ClickException) -> UsageError:
    ctx = getattr(err, "ctx", None)
    cmd = ctx.command_path if ctx is not None else "adapterctl"
    return UsageError(err.format_message(), hint=f"Run '{cmd} --help' for usage and examples.")


def secrets_in(args: list[str]) -> list[str]:
    """Tokens this run knows (``--token``, HF_TOKEN; ``--api-key``, ADAPTERCTL_API_KEY): never
    echoed, whatever raised."""
    found = [
        os.environ.get("HF_TOKEN"),
        os.environ.get("HUGGING_FACE_HUB_TOKEN"),
        os.environ.get("ADAPTERCTL_API_KEY"),
    ]
    for i, arg in enumerate(args):
        for flag in ("--token", "--api-key"):
            if arg == flag and i + 1 < len(args):
                found.append(args[i + 1])
            elif arg.startswith(flag + "="):
                found.append(arg.partition("=")[2])
    return [s for s in found if s and len(s) >= 6]


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def main(argv: list[str] | None = None) -> None:
    settings, args = split_global_flags(list(sys.argv[1:] if argv is None else argv))
    settings.secrets = secrets_in(args)
    out = Output(settings)
    output_mod.set_output(out)
    code = 0
    try:
        _register_commands(args)
        command = typer.main.get_command(app)
        rv = command.main(args=args, prog_name="adapterctl", standalone_mode=False, complete_var=COMPLETE_VAR)
        code = rv if isinstance(rv, int) else 0
        if code == Interrupted.exit_code:  # Typer turns Ctrl-C into a silent return of 130
            code = _report(out, Interrupted("interrupted"), settings)
    except AdapterctlError as err:
        code = _report(out, err, settings)
    except typer.Exit as err:
        code = err.exit_code
    except ClickException as err:
        code = _report(out, _usage_error(err), settings)
    except (KeyboardInterrupt, typer.Abort) as err:
        code = _report(out, Interrupted("interrupted"), settings, err)
    except BrokenPipeError:  # the reader went away (| head): not a failure
        output_mod.silence_stdout()
        code = 0
    except Exception as err:  # a bug: say so, and how to get the details
        wrapped = AdapterctlError(
            f"internal error: {type(err).__name__}: {err}",
            hint="This is a bug in adapterctl; rerun with --debug and report it.",
        )
        code = _report(out, wrapped, settings, err)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        output_mod.silence_stdout()
    _outcome_decided()
    raise SystemExit(code)


def entry() -> None:
    """The process's entry point (the ``adapterctl`` script, ``python -m adapterctl``): :func:`main`,
    then the end of the process. Where torch is loaded that end skips the interpreter's teardown,
    which then takes 0.3-0.4 s (measured: from the last exit handler to the process's end) after
    every command that used it, for nothing a finished command needs. Every exit handler still runs
    (logging's flush, Ray's shutdown, temporary folders), and stdio is flushed. A non-daemon
    thread still running gets the normal exit, which waits for it."""
    sys.unraisablehook = _ctrl_c_delivered_again(sys.unraisablehook)
    try:
        main()
    except SystemExit as done:
        if isinstance(done.code, int) and "torch" in sys.modules and _only_thread():
            _end_process(done.code)
        raise


def _ctrl_c_delivered_again(hook):
    """A Ctrl-C that lands in a callback Python cannot raise from (a weak reference's, such as
    importlib's module locks, or a finalizer) is printed as "Exception ignored" with a traceback,
    and is then lost: the command runs on. Delivered again a moment later (from another thread,
    once the hook has returned), it interrupts the command as any other Ctrl-C does. Other
    exceptions go to ``hook`` as before."""

    def unraisable(info) -> None:
        if (
            isinstance(info.exc_value, KeyboardInterrupt)
            and threading.current_thread() is threading.main_thread()
        ):
            # raised here, in the hook, it would be lost again
            threading.Thread(target=_interrupt_main_soon, name="adapterctl-ctrl-c", daemon=True).start()
            return
        hook(info)

    return unraisable


def _interrupt_main_soon() -> None:
    time.sleep(0.01)
    _thread.interrupt_main()  # as if SIGINT arrived now; nothing once Ctrl-C is ignored


def _only_thread() -> bool:
    """No Python thread but daemons left to wait for (the normal exit would join them)."""
    return all(t.daemon or t is threading.main_thread() for t in threading.enumerate())


def _end_process(code: int) -> None:
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say on it
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C libraries' buffered stdio, which exit() would flush
    except (OSError, AttributeError, TypeError):  # no C library to load by name (Windows)
        pass
    os._exit(code)


def _outcome_decided() -> None:
    """From here on Ctrl-C changes nothing: the output is published (or refused) and the exit code
    chosen. Python then shuts down, running library finalizers (torch's among them); a Ctrl-C landing
    in one would print a traceback and no more, so it is ignored."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _report(out: Output, err: AdapterctlError, settings: Settings, cause: BaseException | None = None) -> int:
    # a last line of defence: library messages (internal errors, tracebacks) may quote a token
    secrets = settings.secrets
    if settings.debug:
        sys.stderr.write(redact("".join(traceback.format_exception(cause or err)), secrets))
    err.message = redact(err.message, secrets)
    err.hint = redact(err.hint, secrets) if err.hint else err.hint
    out.error(err)
    return err.exit_code
