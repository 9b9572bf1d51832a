#!/usr/bin/env python3
"""Writes a small TorchScript test lip-sync model for arbiter-tts.

    scripts/make-test-lipsync.py OUTDIR [--face-size 96] [--fps 25] [--sample-rate 16000]
                                        [--channels 16] [--seed 0] [--name NAME]

OUTDIR gets two files, the layout `arbiter-tts serve --lipsync-dir OUTDIR` loads (see
docs/lipsync.md):

- lipsync.ts.pt: a scripted module whose

      forward(face: FloatTensor[1, 3, S, S], audio: FloatTensor[1, N]) -> FloatTensor[T, 3, S, S]

  takes a face (RGB, channels first, values in -1..1, S = face_size) and mono audio (samples
  in -1..1 at sample_rate Hz) and returns T mouth frames (RGB, channels first, values in
  -1..1), with T = floor(N * fps / sample_rate + 1/2): one frame every 1/fps seconds of audio,
  rounded half up. Zero frames when the audio is shorter than half a frame.
  How it works: the audio's energy is pooled into 8 bins per frame (adaptive average pooling
  of the squared samples, so any N works), a linear layer turns each frame's bins into a code
  of `channels` values, the face goes through a 3x3 conv, the two are added per frame and a
  second 3x3 conv with tanh draws the frame; only the lower third of the face (the mouth
  region, a fixed soft mask) is replaced, the rest of each frame is the input face.
- lipsync.json: the config arbiter-tts reads: face_size, fps, and audio (features
  "waveform": raw mono samples, and the sample_rate the model expects; arbiter-tts resamples
  whatever it is given to that rate).

THE WEIGHTS ARE RANDOM (seeded, so the files are reproducible): the mouth region of every
frame is noise-like, not a mouth. No real lip-sync weights can be downloaded here; this model
only exercises the interface (face and audio in, frames out, the frame count the audio's
length implies) and the serving path, including moving the model off the GPU when the
supervisor reclaims its memory.
"""

import argparse
import json
import os
import sys

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as error:  # pragma: no cover - a setup problem, said plainly
    sys.exit(f"make-test-lipsync.py: cannot import torch ({error}): run scripts/setup.sh and "
             "source scripts/env.sh so the venv's python3 is first on PATH")

BINS = 8


class TinyLipSync(nn.Module):
    """Face and audio in, T = round_half_up(N * fps / sample_rate) frames out."""

    def __init__(self, face_size: int, fps: int, sample_rate: int, channels: int):
        super().__init__()
        self.face_size = face_size
        self.fps = fps
        self.sample_rate = sample_rate
        self.bins = BINS
        self.audio_proj = nn.Linear(BINS, channels)
        self.face_conv = nn.Conv2d(3, channels, 3, padding=1)
        self.draw = nn.Conv2d(channels, 3, 3, padding=1)
        # The mouth region: 0 above two thirds of the face, rising to 1 at the chin.
        rows = torch.linspace(0.0, 1.0, face_size)
        mask = torch.clamp((rows - 0.6) * 5.0, 0.0, 1.0).view(1, 1, face_size, 1)
        self.register_buffer("mask", mask.expand(1, 1, face_size, face_size).contiguous())

    @torch.jit.export
    def frame_count(self, samples: int) -> int:
        return (2 * samples * self.fps + self.sample_rate) // (2 * self.sample_rate)

    def forward(self, face: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        s = self.face_size
        t = self.frame_count(audio.shape[1])
        if t == 0:
            return torch.zeros(0, 3, s, s, dtype=face.dtype, device=face.device)
        energy = F.adaptive_avg_pool1d((audio * audio).unsqueeze(0), t * self.bins)  # [1, 1, T*8]
        energy = torch.sqrt(energy).view(t, self.bins)
        code = torch.tanh(self.audio_proj(energy)).view(t, -1, 1, 1)  # [T, C, 1, 1]
        features = torch.tanh(self.face_conv(face))  # [1, C, S, S]
        mouth = torch.tanh(self.draw(features + code))  # [T, 3, S, S]
        return face * (1.0 - self.mask) + mouth * self.mask


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--face-size", type=int, default=96)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="the model's name (default: OUTDIR's file name)")
    args = parser.parse_args()
    if not 16 <= args.face_size <= 512:
        parser.error("--face-size must be 16 to 512")
    if not 1 <= args.fps <= 60:
        parser.error("--fps must be 1 to 60")
    if not 8000 <= args.sample_rate <= 48000:
        parser.error("--sample-rate must be 8000 to 48000")
    if args.channels < 1:
        parser.error("--channels must be positive")

    torch.manual_seed(args.seed)
    model = TinyLipSync(args.face_size, args.fps, args.sample_rate, args.channels).eval()
    scripted = torch.jit.script(model)

    os.makedirs(args.outdir, exist_ok=True)
    scripted.save(os.path.join(args.outdir, "lipsync.ts.pt"))
    config = {
        "face_size": args.face_size,
        "fps": args.fps,
        "audio": {"features": "waveform", "sample_rate": args.sample_rate},
        "note": "random weights: the mouth region of each frame is noise, not a mouth",
    }
    if args.name:
        config["name"] = args.name
    with open(os.path.join(args.outdir, "lipsync.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    # Self-check: the frame count is what the audio's length implies, and frames are in range.
    with torch.no_grad():
        face = torch.rand(1, 3, args.face_size, args.face_size) * 2 - 1
        for seconds in (0.0, 0.01, 1.0, 2.3):
            n = int(round(seconds * args.sample_rate))
            frames = scripted(face, torch.randn(1, n) * 0.1)
            expected = (2 * n * args.fps + args.sample_rate) // (2 * args.sample_rate)
            assert frames.shape == (expected, 3, args.face_size, args.face_size), \
                (frames.shape, expected)
            assert frames.numel() == 0 or float(frames.abs().max()) <= 1.0
    print(f"wrote {args.outdir}/lipsync.ts.pt and lipsync.json (face {args.face_size}px, "
          f"{args.fps} fps, {args.sample_rate} Hz waveform; random weights)")


if __name__ == "__main__":
    main()
