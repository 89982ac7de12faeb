#!/usr/bin/env python3
"""PyTorch side of `nullpaint bench --torch`: the same stages, in the same order, on the same model
folder, with transformers' CLIPTextModel and diffusers' UNet2DConditionModel and AutoencoderKL.

The whole inpaint is not a diffusers pipeline (none does DDNM's projection): it is SPEC.md written
out on those components, as `spec_inpaint` in tests/fixtures/generate.py: tokenizer + text encoder
for [negative, prompt], `z_y = scaling * mean(E(M_p * x))`, the latent mask (nearest downsample,
hole dilated by `--dilate`), a DDIM loop (eta 0, DDIMScheduler's schedule from the folder) with
classifier-free guidance on a batch of 2 and the projection `z0_hat = M_l * z_y + (1 - M_l) * z0`
at every step, decode, bytes, paste-back of the known pixels.

CPU: float32, `torch.set_num_threads(--threads)` (the cores nullpaint used). CUDA (`--device
cuda`): float16 by default (`--dtype f32` to change), attention through PyTorch's SDPA (the
default attention processor of diffusers 0.42 and transformers 5 on torch 2). Every time includes
reading the result back to the host (`.cpu()`), as nullpaint's do, which also waits for the GPU.

Prints one JSON line: `seconds` (the stage names nullpaint uses), `unet_s` (each steady-state
step), `peak_rss_bytes` (this process, `ru_maxrss`), `gpu_peak_bytes` (CUDA:
`torch.cuda.max_memory_reserved`, which leaves out the CUDA context), `gpu_allocated_bytes`
(`torch.cuda.max_memory_allocated`: what tensors held at the peak), versions.

    .venv-ref/bin/python tests/bench/sd_torch.py --model ~/.cache/nullpaint/sd15-random --size 256 --steps 2
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import time
from pathlib import Path


def variant(folder: Path, stem: str):
    """`fp16` when the folder holds only `STEM.fp16.safetensors` (the hub's f16 variant)."""
    if (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.bin").is_file():
        return None
    if (folder / f"{stem}.fp16.safetensors").is_file():
        return "fp16"
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def test_image(size: int):
    """uint8 [size, size, 3]: the picture nullpaint's bench uses (red = x, green = y, blue = x ^ y)."""
    import torch

    i = torch.arange(size)
    x, y = i[None, :].expand(size, size), i[:, None].expand(size, size)
    return torch.stack([x * 256 // size, y * 256 // size, (x ^ y) & 255], dim=-1).to(torch.uint8)


def test_hole(size: int):
    """bool [size, size]: the centred square hole of side size / 2."""
    import torch

    hole = torch.zeros(size, size, dtype=torch.bool)
    a = size // 4
    hole[a:a + size // 2, a:a + size // 2] = True
    return hole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="diffusers folder")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["auto", "f32", "f16"], default="auto",
                    help="auto: f16 on cuda, f32 on cpu")
    ap.add_argument("--prompt", default="a red brick wall with a wooden door")
    ap.add_argument("--negative-prompt", default="blurry")
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--dilate", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inpaint-only", action="store_true",
                    help="time only the load and the whole inpaint (stages 2 to 5 skipped)")
    args = ap.parse_args()
    started = time.time()

    import torch
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # Loading chatter (progress bars, "install accelerate") would bury the figures.
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    dev = torch.device(args.device)
    dtype = torch.float16 if (args.dtype == "f16" or (args.dtype == "auto" and args.device == "cuda")) else torch.float32
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        described = f"cpu ({cpu_name()}), {args.threads} threads"
    else:
        described = f"cuda ({torch.cuda.get_device_name(dev)})"

    def done(t):
        """Seconds since t; called after the result was read back to the host (`.cpu()`)."""
        return time.perf_counter() - t

    seconds = {}
    folder = args.model
    with torch.no_grad():
        # model load
        t = time.perf_counter()
        tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        te = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=dtype,
                                           variant=variant(folder / "text_encoder", "model"))
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=dtype,
                                                    variant=variant(folder / "unet", "diffusion_pytorch_model"))
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=dtype,
                                            variant=variant(folder / "vae", "diffusion_pytorch_model"))
        te, unet, vae = (m.to(dev).eval() for m in (te, unet, vae))
        sched = DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds["load_s"] = done(t)
        sf = vae.config.scaling_factor
        factor = 2 ** (len(vae.config.block_out_channels) - 1)

        def embed(texts):
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(dev)
            return te(ids).last_hidden_state

        unet_s = []
        lat = args.size // factor
        image = test_image(args.size)
        if not args.inpaint_only:
            # text encoder: [negative, prompt], first call then steady state
            for key in ("text_encoder_first_s", "text_encoder_s"):
                t = time.perf_counter()
                ctx = embed([args.negative_prompt, args.prompt])
                ctx.cpu()
                seconds[key] = done(t)

            # one guided UNet step: batch 2 at the latent size, first call then --iters more
            g = torch.Generator("cpu").manual_seed(args.seed)
            x = torch.randn((2, unet.config.in_channels, lat, lat), generator=g).to(device=dev, dtype=dtype)
            step = torch.tensor(999, device=dev)
            t = time.perf_counter()
            unet(x, step, encoder_hidden_states=ctx).sample.cpu()
            seconds["unet_first_s"] = done(t)
            for _ in range(args.iters):
                t = time.perf_counter()
                unet(x, step, encoder_hidden_states=ctx).sample.cpu()
                unet_s.append(done(t))
            seconds["unet_median_s"] = statistics.median(unet_s)
            seconds["unet_min_s"] = min(unet_s)

            # VAE encode of the picture, decode of its latent: first call then steady state
            pixels = (image.permute(2, 0, 1)[None].float() / 127.5 - 1.0).to(device=dev, dtype=dtype)
            for key in ("vae_encode_first_s", "vae_encode_s"):
                t = time.perf_counter()
                z = vae.encode(pixels).latent_dist.mean
                z.cpu()
                seconds[key] = done(t)
            for key in ("vae_decode_first_s", "vae_decode_s"):
                t = time.perf_counter()
                vae.decode(z).sample.cpu()
                seconds[key] = done(t)

        # the whole inpaint (SPEC.md), centred square hole, --steps steps
        hole = test_hole(args.size)
        t = time.perf_counter()
        mp = (~hole).to(device=dev, dtype=dtype)[None, None]  # 1 known, 0 hole
        x = (image.permute(2, 0, 1)[None].to(device=dev, dtype=dtype) / 127.5 - 1.0)
        z_y = sf * vae.encode(mp * x).latent_dist.mean
        h = 1.0 - mp[:, :, ::factor, ::factor]
        if args.dilate > 0:
            h = torch.nn.functional.max_pool2d(h, 2 * args.dilate + 1, stride=1, padding=args.dilate)
        m_l = 1.0 - h
        guided = args.guidance_scale > 1.0
        ctx = embed([args.negative_prompt, args.prompt] if guided else [args.prompt])
        z = torch.randn((1, unet.config.in_channels, lat, lat), generator=torch.Generator("cpu").manual_seed(args.seed),
                        dtype=torch.float32).to(device=dev, dtype=dtype)
        sched.set_timesteps(args.steps)
        step_ratio = sched.config.num_train_timesteps // args.steps
        for ts in sched.timesteps:
            ts = int(ts)
            a_t = float(sched.alphas_cumprod[ts])
            p = ts - step_ratio
            a_p = float(sched.alphas_cumprod[p]) if p >= 0 else float(sched.final_alpha_cumprod)
            out = unet(torch.cat([z, z]) if guided else z, ts, encoder_hidden_states=ctx).sample
            if guided:
                u, c = out.chunk(2)
                out = u + args.guidance_scale * (c - u)
            if sched.config.prediction_type == "v_prediction":
                z0 = math.sqrt(a_t) * z - math.sqrt(1 - a_t) * out
                eps = math.sqrt(a_t) * out + math.sqrt(1 - a_t) * z
            else:
                eps = out
                z0 = (z - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if sched.config.clip_sample:
                z0 = z0.clamp(-sched.config.clip_sample_range, sched.config.clip_sample_range)
            z0_hat = m_l * z_y + (1 - m_l) * z0
            z = math.sqrt(a_p) * z0_hat + math.sqrt(1 - a_p) * eps
            z[0, 0, 0, 0].item()  # wait for the step, as nullpaint's loop does
        dec = vae.decode(z / sf).sample.float().clamp(-1, 1)
        pix = torch.round((dec + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).cpu()
        torch.where(hole[..., None], pix, image)
        seconds["inpaint_s"] = done(t)

    gpu_peak = torch.cuda.max_memory_reserved(dev) if args.device == "cuda" else None
    gpu_allocated = torch.cuda.max_memory_allocated(dev) if args.device == "cuda" else None
    print(json.dumps({
        "tool": "pytorch",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": described,
        "dtype": "f16" if dtype == torch.float16 else "f32",
        "attention": "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "math",
        "inpaint": "SPEC.md DDIM loop with guidance and latent projection on diffusers components (tests/bench/sd_torch.py)",
        "threads": args.threads if args.device == "cpu" else None,
        "seconds": seconds,
        "unet_s": unet_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "gpu_peak_bytes": gpu_peak,
        "gpu_allocated_bytes": gpu_allocated,
        "started_unix": started,
        "finished_unix": time.time(),
    }))


if __name__ == "__main__":
    main()
