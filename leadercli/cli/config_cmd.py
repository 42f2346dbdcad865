"""`leader config`: print the resolved settings as TOML."""

from __future__ import annotations

import typer

from leadercli.cli.common import ConfigOpt, DebugOpt, LeaderCommand, QuietOpt, SetOpt, examples, load, run


def register(app: typer.Typer) -> None:
    app.command(
        cls=LeaderCommand,
        name="config",
        epilog=examples(
            "leader config", "leader config --config leader.toml", "LEADER_DATA__SOURCE=mimic4 leader config"
        ),
    )(config)


def config(
    sets: SetOpt = None, config: ConfigOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False
) -> None:
    """Print the resolved settings (defaults < leader.toml < LEADER_* environment) as TOML; validates them.

    Every key is listed with its description; keys that are unset appear as `# key = unset` comments. Any key can
    be set in leader.toml (`[section] key = value`), as LEADER_SECTION__KEY=value, or on a command line with
    `--set section.key=value`.
    """

    def body() -> None:
        from leadercli import console

        console.out.print(load(config, sets).describe(), end="", highlight=False, markup=False)

    run(body, quiet=quiet, debug=debug)
