#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench unet`: the same full-size UNet forward in diffusers.

Builds UNet2DConditionModel from a config.json with random weights, runs `warmup` + `iters`
forwards of batch `batch` at a `size`x`size` latent on the CPU in float32 with 2 threads (as the
bench machine has), and prints one JSON line: seconds per forward (each run) and peak RSS.
"""
import json
import resource
import sys
import time

import torch
from diffusers import UNet2DConditionModel

config_path, batch, size, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
cfg = json.load(open(config_path))
cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
torch.manual_seed(0)
unet = UNet2DConditionModel(**cfg).eval()
ctx_dim = cfg["cross_attention_dim"]
x = torch.randn(batch, cfg.get("in_channels", 4), size, size)
ctx = torch.randn(batch, 77, ctx_dim)
times = []
with torch.no_grad():
    unet(x, torch.tensor(999), encoder_hidden_states=ctx)  # warm-up
    for _ in range(iters):
        t0 = time.perf_counter()
        unet(x, torch.tensor(999), encoder_hidden_states=ctx)
        times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"torch": torch.__version__, "seconds": times, "peak_rss_bytes": peak}))
