"""Write a randomly initialised LLaMA-style checkpoint (safetensors + an offline tokenizer) to a folder, so that
`leader train teacher --base-model DIR` can be exercised at 7B scale without downloading weights.

    python benchmarks/make_random_llama.py /tmp/llama7b            # LLaMA-7B shape, bf16, built on the GPU
    python benchmarks/make_random_llama.py /tmp/llama-tiny --tiny  # CPU smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--tiny", action="store_true", help="A tiny config on CPU.")
    args = p.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test helper, not in the wheel
    from tiny_llama import make_tiny_tokenizer

    t0 = time.perf_counter()
    shape = (
        dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512
        )
        if args.tiny
        else dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            intermediate_size=11008,
            vocab_size=32000,
        )
    )
    config = LlamaConfig(
        **shape,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        rms_norm_eps=1e-5,
    )
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    make_tiny_tokenizer().save_pretrained(args.out)
    print(f"wrote {args.out}: {n / 1e9:.2f}B parameters, {dtype}, in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
