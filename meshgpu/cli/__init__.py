"""The ``meshgpu`` command line: thin, it parses, calls the library, and renders.

Each command lives in its own module and is imported only when it is run (or when
``--help`` lists it), so ``meshgpu --help`` stays fast and a command's heavy imports
(OpenCL, onnxruntime, trio) are paid only by that command.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "join": "meshgpu.cli.join:join",
    "simulate": "meshgpu.cli.simulate:simulate",
    "sweep": "meshgpu.cli.sweep:sweep",
    "keygen": "meshgpu.cli.keygen:keygen",
    "keyring": "meshgpu.cli.keyring:keyring",
    "http-token": "meshgpu.cli.http_token:http_token",
    "models": "meshgpu.cli.models:models",
    "run": "meshgpu.cli.inference:run",
    "devices": "meshgpu.cli.inference:devices",
    "submit": "meshgpu.cli.submit:submit",
    "collect": "meshgpu.cli.collect:collect",
    "status": "meshgpu.cli.status:status",
    "tasks": "meshgpu.cli.status:tasks",
    "demo": "meshgpu.cli.demo:demo",
}


class LazyGroup(click.Group):
    """A click group that imports each subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meshgpu")
def main() -> None:
    """meshgpu: pool a lab's GPU machines for ONNX inference.

    Every machine runs the same daemon (`meshgpu join`); peers find each other by mDNS,
    gossip membership and load, and share a replicated task queue with no fixed
    coordinator. Submit work to any peer with `meshgpu submit`.
    """
