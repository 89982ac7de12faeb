#!/usr/bin/env python3
"""Writes a full-size Stable Diffusion 1.5 (or 2.1) folder with random f16 weights, laid out as
the hub's repository is (`*.fp16.safetensors`, diffusers configs, the real CLIP tokenizer): 2.1 GB
(SD 2.1: 2.6 GB), for measuring the browser's download, storage, load time and wasm heap
(tests/browser/bench_load.mjs) and speed and memory (`nullpaint bench --random`) on the real
sizes. The weights are noise, so outputs are meaningless.

    python3 tests/browser/make_full_size_model.py OUT_DIR [sd15|sd21]

Python 3 stdlib only; configs and key/shape lists come from tests/fixtures/configs/NAME (default
sd15); tokenizer, scheduler and model_index.json from the tiny fixture of the same family
(tiny-sd1: pad token `<|endoftext|>`, epsilon; tiny-sd2: pad token `!`, DDIM v_prediction, as the
real SD 2.1). model_index.json is written last: its presence marks a complete folder.
"""

import json
import random
import shutil
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures"
# The tiny fixture whose tokenizer / scheduler / model_index.json each architecture takes.
FAMILY = {"sd15": "tiny-sd1", "sd21": "tiny-sd2"}
FILES = {
    "text_encoder": "text_encoder/model.fp16.safetensors",
    "unet": "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae": "vae/diffusion_pytorch_model.fp16.safetensors",
}


def noise_block(n: int, scale: float, seed: int) -> bytes:
    rng = random.Random(seed)
    return struct.pack(f"<{n}e", *(rng.uniform(-scale, scale) for _ in range(n)))


def write_safetensors(path: Path, keys: list, block: bytes) -> int:
    header, offset = {}, 0
    for key, shape in keys:
        size = 2
        for d in shape:
            size *= d
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape in keys:
            size = 2
            for d in shape:
                size *= d
            # Norm scales near 1, everything else small noise.
            if key.endswith((".weight",)) and len(shape) == 1 and "norm" in key:
                f.write(struct.pack("<e", 1.0) * (size // 2))
                continue
            while size:
                n = min(size, len(block))
                f.write(block[:n])
                size -= n
    tmp.replace(path)
    return offset


def main() -> None:
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in FAMILY):
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) == 3 else "sd15"
    configs, tiny = FIXTURES / "configs" / name, FIXTURES / FAMILY[name]
    keys = json.loads((configs / "keys.json").read_text())
    block = noise_block(1 << 20, 0.02, 0)
    for part in ("unet", "vae", "text_encoder"):
        (out / part).mkdir(parents=True, exist_ok=True)
        shutil.copy(configs / part / "config.json", out / part / "config.json")
        size = write_safetensors(out / FILES[part], keys[part]["keys"], block)
        print(f"{FILES[part]}: {len(keys[part]['keys'])} tensors, {size / 1e6:.0f} MB")
    shutil.copytree(tiny / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(tiny / "scheduler", out / "scheduler", dirs_exist_ok=True)
    shutil.copy(tiny / "model_index.json", out / "model_index.json")


if __name__ == "__main__":
    main()
