"""`python -m leadercli …` (used by `accelerate launch -m leadercli` and `torchrun -m leadercli`)."""

from leadercli.cli.main import app

if __name__ == "__main__":
    app(prog_name="leader")
