"""Raw tables → artifact folder → samples → tensors. `artifact.py` holds the contract between the layers."""
