"""Entry point of the ``moesim`` console script.

Each command family lives in its own module with a ``register(app)`` function. At load the commands read only
light registries for their help and choices (``moesim.options``, ``tuner.engine_files``, ``tuner.rebalance``'s
defaults, ``tuner.autotune.samplers``); the heavy imports (the solvers, kernels, torch, triton, optuna, matplotlib)
happen inside the command functions, so ``moesim --help`` stays fast and planning/simulation work without the
``kernels`` extra (``tests/cli/test_main.py`` checks which modules load).
"""

from __future__ import annotations

import importlib
import sys

import typer

from moesim.errors import MoesimError

app = typer.Typer(
    name="moesim",
    help=(
        "Plan and tune Mixture-of-Experts layers for GPU clusters.\n\n"
        "Example: moesim plan --model olmoe-1b-7b --cluster dgx-h100 "
        "--trace profiles/traces/olmoe_c4.npz -o placement.yaml"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that register commands, in the order they appear in --help. A module that is missing (work in
# progress on a branch) is skipped rather than breaking every other command.
COMMAND_MODULES = (
    "specs_cmd",
    "trace_cmd",
    "simulate_cmd",
    "plan_cmd",
    "rebalance_cmd",
    "whatif_cmd",
    "autotune_cmd",
    "profile_cmd",
    "validate_cmd",
)


@app.callback()
def _root() -> None:
    """Plan and tune Mixture-of-Experts layers for GPU clusters."""


@app.command("version")
def version() -> None:
    """Print moesim's version."""
    from moesim import __version__

    print(__version__)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cli.{name}":
                continue
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; any ``MoesimError`` and any usage error (an unknown option, a value of the wrong type)
    becomes one line on stderr and exit code 2."""
    # the exceptions of the click that typer runs on (typer >= 0.29 vendors it as typer._click)
    click_exc = importlib.import_module(typer.BadParameter.__module__)
    no_args = getattr(click_exc, "NoArgsIsHelpError", ())

    try:
        # standalone_mode=False: click raises its usage errors instead of printing a multi-line box
        rc = app(args=argv, prog_name="moesim", standalone_mode=False)
    except MoesimError as exc:
        print(f"moesim: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except no_args as exc:  # a bare command group: its help, as before
        print(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        sys.exit(0)
    except click_exc.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        param = getattr(exc, "param", None)
        see = f"see {ctx.command_path} --help" if ctx is not None else "see --help"
        bad_value = isinstance(exc, click_exc.BadParameter) and not isinstance(exc, click_exc.MissingParameter)
        if bad_value and str(exc.message).strip() and param is not None and getattr(param, "opts", None):
            # a value of the wrong type: name the option as it is spelt, then what is wrong with the value
            name = param.opts[0]
            message = " ".join(str(exc.message).split()).rstrip(".")
            # click says "a valid int range" for an int with min/max: the value is not an integer either way
            message = message.replace("is not a valid int range", "is not an integer")
            message = message.replace("is not a valid int", "is not an integer")
            message = message.replace("is not a valid float", "is not a number")
            print(f"moesim: error: {name}: {message} ({see})", file=sys.stderr)
        else:
            message = " ".join(exc.format_message().split())
            where = f"{ctx.command_path}: " if ctx is not None else ""
            print(f"moesim: error: {where}{message} ({see})", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("moesim: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)  # as click's standalone mode does


if __name__ == "__main__":
    main()
