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

A text encoder may be stored quantized (dtype `nf4` or `fp8-e4m3`): its blocks' linear
matrices are written quantized (the format is below, at `quantize_nf4` and `quantize_fp8`,
and in docs/pipeline-format.md), and its code dequantizes each of them on the device, inside
the forward, just before its matmul, computing in bf16. Every other tensor is bf16. The
random values are drawn exactly as for a plain component with the same seed, and rounded to
bf16 before they are quantized, so a quantized encoder is the quantization of the bf16
encoder generated with the same seed (and device).

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
# Stored quantized, computed in bf16 (text encoders only).
QUANTIZED = ("nf4", "fp8-e4m3")
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32",
                      torch.uint8: "U8", torch.int8: "I8", torch.float8_e4m3fn: "F8_E4M3"}

# NF4: the 16 values of 4-bit NormalFloat (the QLoRA paper's quantiles of N(0, 1), scaled
# to [-1, 1], with an exact zero), one absmax per block of NF4_BLOCK values, and the absmax
# values themselves quantized ("double quantization"): their mean subtracted, then one
# signed 8-bit code each, scaled per block of ABSMAX_BLOCK of them.
NF4_CODE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
NF4_BLOCK = 64
ABSMAX_BLOCK = 256
# The largest finite float8 e4m3fn value.
FP8_MAX = 448.0


def param(*shape: int) -> nn.Parameter:
    """A parameter of a given logical shape, created on the meta device (no memory)."""
    return nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)


def typed(dtype: torch.dtype, *shape: int) -> nn.Parameter:
    """A parameter stored in `dtype` whatever the component's dtype (quantized data)."""
    return nn.Parameter(torch.empty(*shape, device="meta", dtype=dtype), requires_grad=False)


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


class Quantized(nn.Module):
    """A linear layer whose weight [out, inp] is stored quantized. `weight()` dequantizes it
    on the device its parameters are on, to bf16, when the forward reaches it: only the
    matrix being multiplied ever exists at full precision, and only until its matmul is
    done, so what stays resident is the quantized bytes."""

    def __init__(self, out: int, inp: int):
        super().__init__()
        self.out_features = out
        self.in_features = inp


class Nf4Linear(Quantized):
    """NF4 with double-quantized absmax: `nf4` packs two 4-bit codes a byte (element 2k of
    the row-major weight in the high nibble of byte k, 2k+1 in the low one); block j of 64
    elements has absmax `absmax[j] / 127 * absmax_scale[j // 256] + absmax_offset`; an
    element is `code[its 4 bits] * its block's absmax`, computed in float32, then bf16."""

    def __init__(self, out: int, inp: int):
        super().__init__(out, inp)
        n = out * inp
        if n % NF4_BLOCK != 0:
            raise SystemExit(f"nf4 needs matrices of a multiple of {NF4_BLOCK} elements, "
                             f"not {out}x{inp}")
        blocks = n // NF4_BLOCK
        self.block = NF4_BLOCK
        self.absmax_block = ABSMAX_BLOCK
        # Assigned in the order they are written (largest first keeps the file aligned).
        self.nf4 = typed(torch.uint8, n // 2)
        self.absmax = typed(torch.int8, blocks)
        self.code = typed(torch.float32, 16)
        self.absmax_scale = typed(torch.float32, -(-blocks // ABSMAX_BLOCK))
        self.absmax_offset = typed(torch.float32, 1)

    def weight(self) -> Tensor:
        blocks = self.absmax.shape[0]
        scale = self.absmax_scale.repeat_interleave(self.absmax_block)[:blocks]
        absmax = self.absmax.float() / 127.0 * scale + self.absmax_offset
        # Both nibbles of every byte value at once: one lookup per byte, not per element.
        byte = torch.arange(256, device=self.nf4.device)
        pairs = torch.stack([self.code[byte >> 4], self.code[byte & 15]], dim=1)
        # In place, so that the working memory is the index, one f32 copy and the bf16
        # result: 6 bytes a value of the matrix.
        values = pairs.index_select(0, self.nf4.int()).view(blocks, self.block)
        values = values.mul_(absmax[:, None])
        return values.to(torch.bfloat16).view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight())


class Fp8Linear(Quantized):
    """float8 e4m3fn with one float32 scale per output channel (row): an element is
    `float(fp8) * scale[row]`, computed in float32, then bf16."""

    def __init__(self, out: int, inp: int):
        super().__init__(out, inp)
        self.fp8 = typed(torch.float8_e4m3fn, out, inp)
        self.scale = typed(torch.float32, out)

    def weight(self) -> Tensor:
        # In place: one f32 copy and the bf16 result, 6 bytes a value of the matrix.
        return self.fp8.float().mul_(self.scale[:, None]).to(torch.bfloat16)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight())


def quantized_linear(quant: str, out: int, inp: int) -> Quantized:
    if quant == "nf4":
        return Nf4Linear(out, inp)
    if quant == "fp8-e4m3":
        return Fp8Linear(out, inp)
    raise SystemExit(f"unknown quantized dtype {quant}")


def quantize_nf4(w: Tensor) -> Dict[str, Tensor]:
    """A bf16 matrix as Nf4Linear's tensors. Each value divided by its block's absmax goes
    to the nearest NF4 value (a value halfway between two goes to the lower one); the
    absmax values, less their mean, are scaled per group of ABSMAX_BLOCK by their largest
    magnitude and rounded (half to even) to -127..127."""
    x = w.float().reshape(-1, NF4_BLOCK)
    absmax = x.abs().amax(dim=1)
    ones = torch.ones_like(absmax)
    scaled = x / torch.where(absmax > 0, absmax, ones)[:, None]
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=x.device)
    q = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2).to(torch.uint8).reshape(-1)
    packed = (q[0::2] << 4) | q[1::2]
    blocks = absmax.numel()
    groups = -(-blocks // ABSMAX_BLOCK)
    offset = absmax.mean()
    centred = torch.zeros(groups * ABSMAX_BLOCK, dtype=torch.float32, device=x.device)
    centred[:blocks] = absmax - offset
    centred = centred.view(groups, ABSMAX_BLOCK)
    scale = centred.abs().amax(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    absmax_q = torch.round(centred / scale[:, None] * 127.0).clamp(-127, 127)
    return {"nf4": packed, "absmax": absmax_q.to(torch.int8).reshape(-1)[:blocks],
            "code": code, "absmax_scale": scale, "absmax_offset": offset.reshape(1)}


def quantize_fp8(w: Tensor) -> Dict[str, Tensor]:
    """A bf16 matrix as Fp8Linear's tensors: each row scaled so that its largest magnitude
    is FP8_MAX, then rounded to the nearest e4m3fn value (half to even)."""
    x = w.float()
    amax = x.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (x / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"fp8": q, "scale": scale}


QUANTIZERS = {"nf4": quantize_nf4, "fp8-e4m3": quantize_fp8}


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


class QuantizedMlp(nn.Module):
    """GatedMlp with quantized matrices, dequantized one at a time."""

    def __init__(self, dim: int, ffn: int, quant: str):
        super().__init__()
        self.gate = quantized_linear(quant, ffn, dim)
        self.up = quantized_linear(quant, ffn, dim)
        self.down = quantized_linear(quant, dim, ffn)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.gate(x)) * self.up(x))


class QuantizedEncoderBlock(nn.Module):
    """EncoderBlock with its linear matrices stored quantized (the norms stay bf16); the
    same computation, each matrix dequantized just before its matmul."""

    def __init__(self, dim: int, heads: int, ffn: int, quant: str):
        super().__init__()
        self.heads = heads
        self.norm1 = param(dim)
        self.qkv = quantized_linear(quant, 3 * dim, dim)
        self.out = quantized_linear(quant, dim, dim)
        self.norm2 = param(dim)
        self.mlp = QuantizedMlp(dim, ffn, quant)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.qkv(rms_norm(h, self.norm1)).chunk(3, dim=-1)
        h = h + self.out(attention(q, k, v, self.heads, mask))
        return h + self.mlp(rms_norm(h, self.norm2))


class TextEncoder(Streamable):
    """Byte-level token ids [B, L] in, prompt embedding [B, L, out_dim] out. With `quant`
    (nf4 or fp8-e4m3) the blocks' matrices are stored quantized; the embedding, the norms
    and the output projection are not."""

    def __init__(self, vocab: int, dim: int, heads: int, ffn: int, blocks: int, out_dim: int,
                 quant: str = ""):
        super().__init__()
        self.embed = param(vocab, dim)
        if quant:
            layers = [QuantizedEncoderBlock(dim, heads, ffn, quant) for _ in range(blocks)]
        else:
            layers = [EncoderBlock(dim, heads, ffn) for _ in range(blocks)]
        self.blocks = nn.ModuleList(layers)
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


def build(role: str, d: dict, quant: str = "") -> nn.Module:
    if quant and role != "text-encoder":
        raise SystemExit(f"{quant} is for text encoders only, not a {role}")
    if role == "text-encoder":
        return TextEncoder(d["vocab"], d["dim"], d["heads"], d["ffn"], d["blocks"], d["out_dim"],
                           quant)
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


def write_component(module: nn.Module, logical: nn.Module, name: str, spec: dict, out: str,
                    device: str, seed: int) -> dict:
    """Writes `module`'s code and weights. `logical` is the same component unquantized: its
    parameters are the values drawn (the same ones, in the same order, whatever the dtype),
    each written as it is or, where `module` holds a quantized layer of that name, as the
    layer's quantized tensors."""
    quant = spec["dtype"] if spec["dtype"] in QUANTIZED else ""
    dtype = torch.bfloat16 if quant else DTYPES[spec["dtype"]]
    layers = {prefix: m for prefix, m in module.named_modules() if isinstance(m, Quantized)}
    # Parameters of quantized layers keep their own dtypes; every other one is `dtype`.
    typed_names = {f"{prefix}.{p}" for prefix, m in layers.items()
                   for p, _ in m.named_parameters(recurse=False)}
    stored_dtype = {n: (p.dtype if n in typed_names else dtype)
                    for n, p in module.named_parameters()}
    stored_shape = {n: list(p.shape) for n, p in module.named_parameters()}
    drawn = [(n, list(p.shape)) for n, p in logical.named_parameters()]
    # What is written for each drawn tensor, in file order.
    written_as = {lname: ([f"{lname}.{p}" for p, _ in layers[lname].named_parameters()]
                          if lname in layers else [lname]) for lname, _ in drawn}
    order = [n for lname, _ in drawn for n in written_as[lname]]
    if sorted(order) != sorted(stored_shape):
        raise SystemExit(f"{name}: the quantized layers do not match the drawn parameters")

    # The code: every parameter an empty placeholder of the dtype it is stored in.
    for pname in list(stored_shape):
        owner = module
        *path, leaf = pname.split(".")
        for part in path:
            owner = getattr(owner, part) if not part.isdigit() else owner[int(part)]
        placeholder = torch.empty(0, dtype=stored_dtype[pname])
        setattr(owner, leaf, nn.Parameter(placeholder, requires_grad=False))
    module.param_shapes = dict(stored_shape)
    scripted = torch.jit.script(module)
    code_path = os.path.join(out, spec["code"])
    scripted.save(code_path + ".tmp")
    os.replace(code_path + ".tmp", code_path)

    # The weights: safetensors, data section aligned to 64 bytes, tensors back to back.
    header, offset = {}, 0
    for pname in order:
        size = math.prod(stored_shape[pname]) * torch.empty(0, dtype=stored_dtype[pname]).element_size()
        header[pname] = {"dtype": SAFETENSORS_DTYPES[stored_dtype[pname]],
                         "shape": stored_shape[pname], "data_offsets": [offset, offset + size]}
        offset += size
    metadata = {"format": "pt", "generator": "arbiter-video make-pipeline", "weights": "random"}
    if quant:
        metadata.update({
            "quantization": quant,
            "compute_dtype": "bf16",
            "quantized": json.dumps({n: shape for n, shape in drawn if n in layers},
                                    separators=(",", ":")),
        })
        if quant == "nf4":
            metadata.update({"nf4_block": str(NF4_BLOCK), "absmax_block": str(ABSMAX_BLOCK)})
    header["__metadata__"] = metadata
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
        for index, (lname, shape) in enumerate(drawn):
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
            std = init_std(lname, shape)
            if std == 0.0:
                t = torch.ones(shape, dtype=dtype)
            else:
                t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
                t = t.mul_(std).to(dtype)
            parts = QUANTIZERS[quant](t) if lname in layers else {"": t}
            for pname in written_as[lname]:
                part = parts[pname[len(lname) + 1:]].cpu().contiguous()
                if part.dtype != stored_dtype[pname] or list(part.shape) != stored_shape[pname]:
                    raise SystemExit(f"{name}: {pname} came out {part.dtype} {list(part.shape)}")
                n = part.numel() * part.element_size()
                view = (ctypes.c_ubyte * n).from_address(part.data_ptr())
                f.write(view)
                digest.update(view)
                written += n
            del t, parts
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
        quant = component["dtype"] if component["dtype"] in QUANTIZED else ""
        with torch.device("meta"):
            module = build(component["role"], component["dims"], quant)
            logical = build(component["role"], component["dims"]) if quant else module
        # A component's own seed, when given, so that generating some of the components
        # draws them as generating all of them would.
        seed = component.get("seed", spec["seed"] + index)
        results[component["name"]] = write_component(
            module, logical, component["name"], component, out, device, seed)
    json.dump({"components": results, "device": device, "torch": torch.__version__},
              sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
