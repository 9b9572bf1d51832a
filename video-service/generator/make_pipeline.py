"""Writes the TorchScript components of a generated Arbiter pipeline.

Run by `arbiter-video make-pipeline`, which holds the presets and writes manifest.toml: it
sends a JSON spec on stdin (output directory, seed, device, and per component its role,
dtype, file names and dimensions) and reads one JSON object from stdout (per component:
parameter bytes, SHA-256 of the weights file). Progress goes to stderr.

Each component is two files (docs/pipeline-format.md):
- `<name>.pt`: TorchScript code whose parameters are empty placeholders (shape [0]), so the
  archive is a few KB whatever the model's size;
- `<name>.safetensors`: the weights, named as the code's parameters, written tensor by
  tensor, so no more than one tensor is ever in memory.

THE WEIGHTS ARE RANDOM. No real weights can be fetched here; these components have the
interfaces, shapes and sizes of a real audio-to-video pipeline (LTX-2.3-like) so that
loading, placement and memory behave as they would, but the video they make is noise.
"""

import ctypes
import hashlib
import json
import math
import os
import sys
import time
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def param(*shape: int) -> nn.Parameter:
    """A parameter of a given logical shape, created on the meta device (no memory)."""
    return nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)


def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
    return y.to(x.dtype) * weight


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor) -> Tensor:
    b, n, d = q.shape
    m = k.shape[1]
    q = q.view(b, n, heads, d // heads).transpose(1, 2)
    k = k.view(b, m, heads, d // heads).transpose(1, 2)
    v = v.view(b, m, heads, d // heads).transpose(1, 2)
    if mask.numel() > 0:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        o = F.scaled_dot_product_attention(q, k, v)
    return o.transpose(1, 2).reshape(b, n, d)


class Component(nn.Module):
    """A component's root module: it carries the shapes its parameters must have, since the
    code's own parameters are empty placeholders, so that the worker can refuse a weights
    file of another model at load rather than fail in the middle of a stage."""

    def __init__(self):
        super().__init__()
        self.param_shapes: Dict[str, List[int]] = {}

    @torch.jit.export
    def shapes(self) -> Dict[str, List[int]]:
        return self.param_shapes


class Streamable(Component):
    """A component whose repeated blocks (`self.blocks`) the worker can stream one at a
    time: `pre(inputs) -> (h, c)`, `block(h, c, i) -> h`, `post(h, c, first_input)`."""

    @torch.jit.export
    def block(self, h: Tensor, c: Tensor, index: int) -> Tensor:
        for i, blk in enumerate(self.blocks):
            if i == index:
                h = blk(h, c)
        return h


class GatedMlp(nn.Module):
    def __init__(self, dim: int, ffn: int):
        super().__init__()
        self.gate = param(ffn, dim)
        self.up = param(ffn, dim)
        self.down = param(dim, ffn)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.gelu(F.linear(x, self.gate)) * F.linear(x, self.up), self.down)


class EncoderBlock(nn.Module):
    """A decoder-only language model layer (Gemma-like): self-attention and a gated MLP."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1 = param(dim)
        self.qkv = param(3 * dim, dim)
        self.out = param(dim, dim)
        self.norm2 = param(dim)
        self.mlp = GatedMlp(dim, ffn)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        q, k, v = F.linear(rms_norm(h, self.norm1), self.qkv).chunk(3, dim=-1)
        h = h + F.linear(attention(q, k, v, self.heads, mask), self.out)
        return h + self.mlp(rms_norm(h, self.norm2))


class TextEncoder(Streamable):
    """Byte-level token ids [B, L] in, prompt embedding [B, L, out_dim] out."""

    def __init__(self, vocab: int, dim: int, heads: int, ffn: int, blocks: int, out_dim: int):
        super().__init__()
        self.embed = param(vocab, dim)
        self.blocks = nn.ModuleList([EncoderBlock(dim, heads, ffn) for _ in range(blocks)])
        self.norm = param(dim)
        self.proj = param(out_dim, dim)

    @torch.jit.export
    def pre(self, tokens: Tensor) -> Tuple[Tensor, Tensor]:
        h = F.embedding(tokens, self.embed)
        # Padding (id 0) is masked out as a key; the mask is additive, [B, 1, 1, L].
        keep = tokens.ne(0)
        mask = torch.zeros(keep.shape, dtype=h.dtype, device=h.device)
        mask = mask.masked_fill(~keep, -1e4)[:, None, None, :]
        return h, mask

    @torch.jit.export
    def post(self, h: Tensor, c: Tensor, tokens: Tensor) -> Tensor:
        return F.linear(rms_norm(h, self.norm), self.proj)

    def forward(self, tokens: Tensor) -> Tensor:
        h, c = self.pre(tokens)
        for blk in self.blocks:
            h = blk(h, c)
        return self.post(h, c, tokens)


class AudioEncoder(Component):
    """Stereo waveform [B, 2, S] in, tokens [B, S / hop, dim] out (25 per second)."""

    def __init__(self, channels: int, hop: int, hidden: int, dim: int):
        super().__init__()
        self.hop = hop
        self.frame = param(hidden, channels, hop)
        self.frame_bias = param(hidden)
        self.proj = param(dim, hidden)

    def forward(self, wave: Tensor) -> Tensor:
        x = F.conv1d(wave, self.frame, self.frame_bias, stride=self.hop)
        return F.linear(F.silu(x.transpose(1, 2)), self.proj)


class ImageEncoder(Component):
    """Image [B, 3, H, W] in [-1, 1] in, first-frame latent [B, C, 1, H/s, W/s] out."""

    def __init__(self, channels: int, hidden: int, spatial: int):
        super().__init__()
        self.spatial = spatial
        self.patch = param(hidden, 3, spatial, spatial)
        self.proj = param(channels, hidden, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        x = F.silu(F.conv2d(image, self.patch, stride=self.spatial))
        return F.conv2d(x, self.proj).unsqueeze(2)


class DiTBlock(nn.Module):
    """A video transformer layer: self-attention over latent tokens, cross-attention to the
    text, audio and image conditioning, and a gated MLP."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1 = param(dim)
        self.qkv = param(3 * dim, dim)
        self.out = param(dim, dim)
        self.norm2 = param(dim)
        self.q = param(dim, dim)
        self.kv = param(2 * dim, dim)
        self.cross_out = param(dim, dim)
        self.norm3 = param(dim)
        self.mlp = GatedMlp(dim, ffn)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        empty = torch.empty(0, device=h.device)
        q, k, v = F.linear(rms_norm(h, self.norm1), self.qkv).chunk(3, dim=-1)
        h = h + F.linear(attention(q, k, v, self.heads, empty), self.out)
        q = F.linear(rms_norm(h, self.norm2), self.q)
        k, v = F.linear(c, self.kv).chunk(2, dim=-1)
        h = h + F.linear(attention(q, k, v, self.heads, empty), self.cross_out)
        return h + self.mlp(rms_norm(h, self.norm3))


class Transformer(Streamable):
    """Latents [B, C, T, h, w], noise level [B], text [B, L, Dt], audio [B, Ta, Da] and the
    image latent [B, C, 1, H', W'] in; velocity, shaped like the latents, out."""

    def __init__(self, channels: int, dim: int, heads: int, ffn: int, blocks: int,
                 text_dim: int, audio_dim: int):
        super().__init__()
        self.dim = dim
        self.patch = param(dim, channels)
        self.time1 = param(dim, 64)
        self.time2 = param(dim, dim)
        self.text = param(dim, text_dim)
        self.audio = param(dim, audio_dim)
        self.image = param(dim, channels)
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, ffn) for _ in range(blocks)])
        self.norm = param(dim)
        self.unpatch = param(channels, dim)

    @torch.jit.export
    def pre(self, x: Tensor, sigma: Tensor, text: Tensor, audio: Tensor,
            image: Tensor) -> Tuple[Tensor, Tensor]:
        b = x.shape[0]
        tokens = x.flatten(2).transpose(1, 2).to(self.patch.dtype)
        h = F.linear(tokens, self.patch)
        freqs = torch.exp(torch.arange(32, device=x.device, dtype=torch.float32)
                          * (-math.log(10000.0) / 32.0))
        angles = sigma.float()[:, None] * 1000.0 * freqs[None, :]
        t = torch.cat([angles.sin(), angles.cos()], dim=-1).to(h.dtype)
        h = h + F.linear(F.silu(F.linear(t, self.time1)), self.time2)[:, None, :]
        image = F.adaptive_avg_pool3d(image.to(h.dtype), [1, x.shape[3], x.shape[4]])
        # Conditioning with a batch of one is shared by every latent in the batch (the
        # conditional and unconditional passes of guidance differ only in the text).
        context = [F.linear(text.to(h.dtype), self.text).expand(b, -1, -1),
                   F.linear(audio.to(h.dtype), self.audio).expand(b, -1, -1),
                   F.linear(image.flatten(2).transpose(1, 2), self.image).expand(b, -1, -1)]
        return h, torch.cat(context, dim=1)

    @torch.jit.export
    def post(self, h: Tensor, c: Tensor, x: Tensor) -> Tensor:
        v = F.linear(rms_norm(h, self.norm), self.unpatch)
        return v.transpose(1, 2).reshape(x.shape).to(x.dtype)

    def forward(self, x: Tensor, sigma: Tensor, text: Tensor, audio: Tensor,
                image: Tensor) -> Tensor:
        h, c = self.pre(x, sigma, text, audio, image)
        for blk in self.blocks:
            h = blk(h, c)
        return self.post(h, c, x)


class Conv3d(nn.Module):
    """A same-size 3x3x3 convolution on a residual branch."""

    def __init__(self, inp: int, out: int):
        super().__init__()
        self.weight = param(out, inp, 3, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(F.conv3d(x, self.weight, padding=1))


class Upsampler(Component):
    """Latents [B, C, T, h, w] in, [B, C, T, 2h, 2w] out."""

    def __init__(self, channels: int, hidden: int, layers: int):
        super().__init__()
        self.inp = param(hidden, channels, 3, 3, 3)
        self.mid = nn.ModuleList([Conv3d(hidden, hidden) for _ in range(layers)])
        self.outp = param(channels, hidden, 3, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = F.interpolate(x.to(self.inp.dtype), scale_factor=[1.0, 2.0, 2.0], mode="nearest")
        h = F.silu(F.conv3d(x, self.inp, padding=1))
        for conv in self.mid:
            h = h + conv(h)
        return (x + 0.1 * F.conv3d(h, self.outp, padding=1)).to(dtype)


class VaeDecoder(Component):
    """Latents [B, C, T, h, w] in, pixels [B, 3, 1 + (T-1)*t, h*s, w*s] in [-1, 1] out
    (causal in time: latent frame 0 is one frame, each later one is t frames)."""

    def __init__(self, channels: int, hidden: int, layers: int, spatial: int, temporal: int):
        super().__init__()
        self.spatial = spatial
        self.temporal = temporal
        self.inp = param(hidden, channels, 3, 3, 3)
        self.mid = nn.ModuleList([Conv3d(hidden, hidden) for _ in range(layers)])
        self.to_pixels = param(3 * temporal * spatial * spatial, hidden, 1, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        b, _, t, h, w = z.shape
        s = self.spatial
        f = self.temporal
        x = F.silu(F.conv3d(z.to(self.inp.dtype), self.inp, padding=1))
        for conv in self.mid:
            x = x + conv(x)
        x = F.conv3d(x, self.to_pixels)  # [B, 3*f*s*s, T, h, w]
        x = x.view(b, 3, f, s, s, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, 3, t * f, h * s, w * s)
        return torch.tanh(x[:, :, f - 1:].float())


def build(role: str, d: dict) -> nn.Module:
    if role == "text-encoder":
        return TextEncoder(d["vocab"], d["dim"], d["heads"], d["ffn"], d["blocks"], d["out_dim"])
    if role == "audio-encoder":
        return AudioEncoder(d["channels"], d["hop"], d["hidden"], d["dim"])
    if role == "image-encoder":
        return ImageEncoder(d["channels"], d["hidden"], d["spatial"])
    if role == "transformer":
        return Transformer(d["channels"], d["dim"], d["heads"], d["ffn"], d["blocks"],
                           d["text_dim"], d["audio_dim"])
    if role == "upsampler":
        return Upsampler(d["channels"], d["hidden"], d["layers"])
    if role == "vae-decoder":
        return VaeDecoder(d["channels"], d["hidden"], d["layers"], d["spatial"], d["temporal"])
    raise SystemExit(f"unknown role {role}")


def init_std(name: str, shape: List[int]) -> float:
    """Scaled so activations stay finite through many blocks; norms start at one."""
    if len(shape) == 1:
        return 0.0
    fan_in = math.prod(shape[1:])
    std = 1.0 / math.sqrt(fan_in)
    # Residual branches start small so a deep stack stays near identity.
    if name.endswith((".out", ".down", ".cross_out", "unpatch", "to_pixels", "mid.weight")) \
            or ".mid." in name:
        std *= 0.2
    return std


def write_component(module: nn.Module, name: str, spec: dict, out: str, device: str,
                    seed: int) -> dict:
    dtype = DTYPES[spec["dtype"]]
    shapes = [(n, list(p.shape)) for n, p in module.named_parameters()]
    # The code: every parameter an empty placeholder of the component's dtype.
    for pname, _ in shapes:
        owner = module
        *path, leaf = pname.split(".")
        for part in path:
            owner = getattr(owner, part) if not part.isdigit() else owner[int(part)]
        setattr(owner, leaf, nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False))
    module.param_shapes = {pname: shape for pname, shape in shapes}
    scripted = torch.jit.script(module)
    code_path = os.path.join(out, spec["code"])
    scripted.save(code_path + ".tmp")
    os.replace(code_path + ".tmp", code_path)

    # The weights: safetensors, data section aligned to 64 bytes, tensors back to back.
    elem = torch.empty(0, dtype=dtype).element_size()
    header, offset = {}, 0
    for pname, shape in shapes:
        size = math.prod(shape) * elem
        header[pname] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": shape,
                         "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "generator": "arbiter-video make-pipeline",
                              "weights": "random"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((64 - (8 + len(text)) % 64) % 64)
    weights_path = os.path.join(out, spec["weights"])
    digest = hashlib.sha256()
    started = time.time()
    written = 0
    with open(weights_path + ".tmp", "wb") as f:
        prefix = len(text).to_bytes(8, "little") + text
        f.write(prefix)
        digest.update(prefix)
        for index, (pname, shape) in enumerate(shapes):
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
            std = init_std(pname, shape)
            if std == 0.0:
                t = torch.ones(shape, dtype=dtype)
            else:
                t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
                t = t.mul_(std).to(dtype).cpu()
            t = t.contiguous()
            n = t.numel() * t.element_size()
            view = (ctypes.c_ubyte * n).from_address(t.data_ptr())
            f.write(view)
            digest.update(view)
            written += n
            del t
        f.flush()
        os.fsync(f.fileno())
    os.replace(weights_path + ".tmp", weights_path)
    seconds = max(time.time() - started, 1e-9)
    print(f"{name}: {written / 1e9:.3f} GB in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"parameter_bytes": written, "sha256": digest.hexdigest()}


def main() -> None:
    spec = json.load(sys.stdin)
    out = spec["out"]
    os.makedirs(out, exist_ok=True)
    device = spec.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_grad_enabled(False)
    results = {}
    for index, component in enumerate(spec["components"]):
        with torch.device("meta"):
            module = build(component["role"], component["dims"])
        results[component["name"]] = write_component(
            module, component["name"], component, out, device, spec["seed"] + index)
    json.dump({"components": results, "device": device, "torch": torch.__version__},
              sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
