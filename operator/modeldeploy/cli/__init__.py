"""The `modeldeploy` command: the operator and its tools, as subcommands.

Each subcommand lives in a module (or a `module:Class`) exposing `add_arguments(parser)` and
`run(args) -> int`, imported only when chosen, so that `modeldeploy trace-summary` does not load kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("modeldeploy.cli.operator", "run the ModelDeployment operator"),
    "trace-summary": ("modeldeploy.cli.trace_summary", "summarize a model-server request trace file"),
    "replay": ("modeldeploy.cli.replay", "send the requests of a payload log (CloudEvents) to a model server again"),
    "promote": ("modeldeploy.cli.verbs:Promote", "promote the canary to stable (during a rollout: skip its remaining steps)"),
    "rollback": ("modeldeploy.cli.verbs:Rollback", "drop the canary (during a rollout: roll it back now)"),
    "abort": ("modeldeploy.cli.verbs:Abort", "roll back a progressive rollout now"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modeldeploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        # add_help=False: `modeldeploy operator --help` reaches the subcommand's full parser below;
        # only the chosen subcommand's module is imported (lazily, after this first parse).
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(_module=module_name)
    args, _ = parser.parse_known_args(argv)
    module_name, _, attr = args._module.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        parser.error(f"'{args.command}' needs a package that is not installed ({e.name}); "
                     "install modeldeploy with the extra that provides it, e.g. pip install 'modeldeploy[server]'")
    command = getattr(module, attr) if attr else module
    full = argparse.ArgumentParser(
        prog=f"modeldeploy {args.command}",
        description=command.__doc__ if attr else module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_arguments(full)
    argv = list(sys.argv[1:] if argv is None else argv)
    sub_args = full.parse_args(argv[argv.index(args.command) + 1 :])
    return int(command.run(sub_args) or 0)


if __name__ == "__main__":
    sys.exit(main())
