#!/usr/bin/env python3
"""Writes the starting corpus of each fuzz target into fuzz/corpus/<target>/seed-* (committed;
libFuzzer adds what it finds to the same folders). Inputs: the test fixtures (configs, images,
tokenizer files), small safetensors files written by the `safetensors` package, and hand-written
cases. Run with the reference venv (tests/fixtures/requirements.txt): .venv-ref/bin/python fuzz/seeds.py
"""
import json
import pathlib
import struct

import numpy as np
from safetensors.numpy import save

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
SEP = b"\n--8<--\n"


def write(target, name, data):
    d = ROOT / "fuzz" / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# safetensors: the dtypes the loader converts, metadata, identification key patterns.
write("safetensors", "f32", save({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}))
write("safetensors", "f16-bf16", save({
    "x.weight": np.ones((2, 2), dtype=np.float16),
    "y": np.zeros((3,), dtype=np.float32),
}, metadata={"format": "pt"}))
raw = bytearray(save({"b": np.ones((4,), dtype=np.float32)}))
hdr_len = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + hdr_len])
header["b"]["dtype"] = "BF16"
header["b"]["shape"] = [8]
h = json.dumps(header).encode()
write("safetensors", "bf16", struct.pack("<Q", len(h)) + h + bytes(raw[8 + hdr_len:]))
write("safetensors", "sd-single-file", save({
    "model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4, 1, 1), dtype=np.float16),
    "first_stage_model.encoder.conv_in.weight": np.zeros((2, 3, 1, 1), dtype=np.float16),
    "cond_stage_model.transformer.text_model.embeddings.position_ids": np.zeros((1, 2), dtype=np.int64),
}))
write("safetensors", "lora", save({
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((1, 2), dtype=np.float32),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": np.zeros((), dtype=np.float32),
}))
write("safetensors", "index", json.dumps({
    "metadata": {"total_size": 8},
    "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                   "b": "diffusion_pytorch_model-00002-of-00002.safetensors"},
}).encode())
write("safetensors", "pickle", b"PK\x03\x04" + b"\x00" * 12)
write("safetensors", "gguf", b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)

# config: the first byte picks the reader (0 UNet, 1 VAE, 2 CLIP, 3 scheduler, 4 model_index,
# 5 a file list).
for folder in ["tiny-sd1", "tiny-sd2", "tiny-bk-sdm-tiny", "tiny-sd-turbo", "legacy-sd1"]:
    base = FIX / folder
    for which, rel in [(0, "unet/config.json"), (1, "vae/config.json"),
                       (2, "text_encoder/config.json"), (3, "scheduler/scheduler_config.json"),
                       (4, "model_index.json")]:
        p = base / rel
        if p.exists():
            write("config", f"{folder}-{rel.replace('/', '-')}", bytes([which]) + p.read_bytes())
write("config", "files", bytes([5]) + "\n".join([
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
    "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
    "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]).encode())
write("config", "single-file", bytes([5]) + b"v1-5-pruned-emaonly.safetensors")

# tokenizer: a small vocabulary with CLIP's special tokens, as vocab.json + merges.txt and as
# one tokenizer.json.
merges = "#version: 0.2\ni n\nt h\nin g</w>\na </w>\n"
vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2, "a</w>": 3, "i": 4, "n": 5, "t": 6,
         "h": 7, "g</w>": 8, "in": 9, "th": 10, "ing</w>": 11, "a": 12}
config = {"model_max_length": 8, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
          "unk_token": "<|endoftext|>", "pad_token": "!"}
special = {"pad_token": {"content": "!", "lstrip": False}}
write("tokenizer", "vocab-merges", SEP.join([json.dumps(vocab).encode(), merges.encode(),
                                              json.dumps(config).encode(),
                                              json.dumps(special).encode(), b"a thing in a ring"]))
tok_json = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
            "model": {"type": "BPE", "vocab": vocab, "merges": merges.splitlines()[1:],
                      "end_of_word_suffix": "</w>", "unk_token": "<|endoftext|>"}}
write("tokenizer", "tokenizer-json", SEP.join([b"", json.dumps(tok_json).encode(),
                                               json.dumps(config).encode(), b"", b"thin ting"]))
sd1 = FIX / "tiny-sd1" / "tokenizer"
write("tokenizer", "configs-only", SEP.join([b"{}", b"#version: 0.2\n",
                                             (sd1 / "tokenizer_config.json").read_bytes(),
                                             (sd1 / "special_tokens_map.json").read_bytes(), b""]))

# image: every picture of the input tests (formats, bit depths, alpha, EXIF orientations,
# a decompression-bomb header) that is small.
for p in sorted((FIX / "inputs").iterdir()):
    if p.suffix in {".png", ".jpg", ".webp", ".bmp"} and ".ref" not in p.name and p.stat().st_size <= 4096:
        write("image", p.name, p.read_bytes())

# options: what users type for --mode, --region-mode, --extend, --model.
write("options", "valid", b"auto\nprojection\ninpaint-unet\nboth\nwhole\nregions\nauto\n32\n0\n"
      b"25%\nsd15\nsd21\nbk-sdm-tiny\nrunwayml/stable-diffusion-v1-5\n")
