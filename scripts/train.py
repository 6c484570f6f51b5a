"""Train a DDPM: `accelerate launch scripts/train.py [flags]`, `torchrun --nproc_per_node 2 scripts/train.py` or
`python scripts/train.py`. With no flags it trains the embedded 8x8 digits default. `--help` lists the flags."""

from ddpm_hf.cli.train import main

if __name__ == "__main__":
    main()
