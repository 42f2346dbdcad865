"""Thin Typer commands: parse options, load settings, call one library function, print."""
