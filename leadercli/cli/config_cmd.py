"""`leader config`: print the resolved settings as TOML."""

from __future__ import annotations

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, QuietOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        "config",
        epilog=examples(
            "leader config", "leader config --config leader.toml", "LEADER_DATA__SOURCE=mimic4 leader config"
        ),
    )(config)


def config(config: ConfigOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Print the resolved settings (defaults < leader.toml < LEADER_* environment) as TOML; validates them."""

    def body() -> None:
        from leadercli import console

        console.out.print(load(config).to_toml(), end="", highlight=False, markup=False)

    run(body, quiet=quiet, debug=debug)
