"""leadercli: LEADER medication recommendation (Liu et al., arXiv 2402.02803) as a command-line tool.

Raw MIMIC-III / MIMIC-IV tables → a reproducible cohort artifact (`leader preprocess`) → an LLM teacher with LoRA
and a drug-classification head (`leader train teacher`) → a small transformer student trained with feature
distillation and profile alignment (`leader distill`) → ranked ATC level-3 drug lists (`leader predict`).
"""

__version__ = "0.1.0"
__all__ = ["Recommender", "__version__"]


def __getattr__(name: str):
    # lazy, so that `import leadercli` (and `leader --help`) does not import torch
    if name == "Recommender":
        from leadercli.api import Recommender

        return Recommender
    raise AttributeError(f"module 'leadercli' has no attribute {name!r}")
