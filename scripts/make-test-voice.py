#!/usr/bin/env python3
"""Writes a small TorchScript test voice (VITS/Piper style) for arbiter-tts.

    scripts/make-test-voice.py OUTDIR [--sample-rate 22050] [--hop 256] [--seed 0] [--name NAME]

OUTDIR gets two files, the layout `arbiter-tts serve --voice-dir OUTDIR` loads:

- voice.ts.pt: a scripted module whose forward(phoneme_ids: LongTensor[1, T],
  lengths: LongTensor[1], scales: FloatTensor[3]) returns audio FloatTensor[1, 1, N], like a
  Piper/VITS export. scales is [noise_scale, length_scale, noise_w]; this model uses only
  length_scale. Each phoneme id gets a duration in frames from a small duration head
  (embedding -> conv1d -> conv1d), multiplied by length_scale, rounded up, at least 1; the
  decoder (embedding -> conv1d -> repeat per frame -> ConvTranspose1d of stride hop -> tanh)
  makes exactly `hop` samples per frame, so N = sum(durations) * hop. The module also exports
  durations(phoneme_ids, lengths, scales) -> LongTensor[T], the frames per id, so tests can
  check the length the model implies.
- voice.json: a Piper-style config: audio.sample_rate, espeak.voice, inference
  (noise_scale, length_scale, noise_w), phoneme_id_map, num_symbols, plus hop_length.

THE WEIGHTS ARE RANDOM (seeded, so the files are reproducible): the output is noise-like
audio of the right length, not speech. No real voice weights can be downloaded here; this
voice only exercises the interface (ids in, waveform out) and the serving path.

phoneme_id_map is keyed by eSpeak NG's ASCII phoneme mnemonics ("_", "h", "@", "l", "oU",
...), as arbiter-tts's `espeak` module reports them from phoneme events. Real Piper voices key
their map by IPA symbols instead; loading one would need eSpeak NG's IPA phoneme output
(espeakINITIALIZE_PHONEME_IPA / espeak_TextToPhonemes with IPA), which is left for later.

Piper's id conventions are kept: "_" is the pad (id 0), "^" starts (id 1) and "$" ends
(id 2) an utterance, and arbiter-tts sends ^ _ p1 _ p2 _ ... pN _ $ when the map has "^" and
"$". eSpeak's own short pause "_" shares the pad id. "<unk>" is the id arbiter-tts uses for a
symbol the map lacks.
"""

import argparse
import json
import os
import sys

try:
    import torch
    from torch import nn
except ImportError as error:  # pragma: no cover - a setup problem, said plainly
    sys.exit(f"make-test-voice.py: cannot import torch ({error}): run scripts/setup.sh and "
             "source scripts/env.sh so the venv's python3 is first on PATH")

# The symbols of arbiter-tts's viseme table (tts-service/src/viseme.rs), eSpeak NG mnemonics.
ESPEAK_SYMBOLS = [
    "_:", "_!", "_^_", ";",
    "p", "b", "m", "f", "v", "T", "D", "t", "d", "t#", "d#", "?",
    "k", "g", "N", "x", "tS", "dZ", "S", "Z", "s", "z",
    "n", "l", "@L", "n-", "l/", "r", "r-", "R", "3",
    "a", "A:", "A", "a#", "V", "aI", "aU", "A@", "h",
    "e", "E", "@", "eI", "e@", "3:",
    "I", "i", "i:", "I2", "I@", "i@", "j",
    "0", "O", "O:", "o", "OI", "oU", "O@", "o@",
    "U", "u", "u:", "U@", "w",
]
PAD, BOS, EOS, UNK = "_", "^", "$", "<unk>"


def phoneme_id_map():
    symbols = [PAD, BOS, EOS, UNK] + ESPEAK_SYMBOLS
    return {symbol: [i] for i, symbol in enumerate(symbols)}


class TinyVits(nn.Module):
    """Phoneme ids in, waveform out; N = sum(durations) * hop samples."""

    def __init__(self, num_symbols: int, hop: int, channels: int = 32):
        super().__init__()
        self.hop = hop
        self.embedding = nn.Embedding(num_symbols, channels)
        self.duration_conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.duration_proj = nn.Conv1d(channels, 1, 1)
        self.decoder_conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.upsample = nn.ConvTranspose1d(channels, 1, hop, stride=hop)

    def _embed(self, phoneme_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        length = int(lengths[0].item())
        ids = phoneme_ids[:, :length]
        return self.embedding(ids).transpose(1, 2)  # [1, C, T]

    def _durations(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.duration_conv(x))
        # 2 to 8 frames a phoneme before length_scale.
        log_w = torch.tanh(self.duration_proj(h)) * 0.7 + 1.6
        w = torch.ceil(torch.exp(log_w) * scales[1])
        return torch.clamp(w, min=1.0).long()[0, 0]  # [T]

    @torch.jit.export
    def durations(self, phoneme_ids: torch.Tensor, lengths: torch.Tensor,
                  scales: torch.Tensor) -> torch.Tensor:
        return self._durations(self._embed(phoneme_ids, lengths), scales)

    def forward(self, phoneme_ids: torch.Tensor, lengths: torch.Tensor,
                scales: torch.Tensor) -> torch.Tensor:
        x = self._embed(phoneme_ids, lengths)
        frames = self._durations(x, scales)
        h = torch.tanh(self.decoder_conv(x))[0]  # [C, T]
        h = torch.repeat_interleave(h, frames, dim=1).unsqueeze(0)  # [1, C, F]
        return torch.tanh(self.upsample(h))  # [1, 1, F * hop]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--sample-rate", type=int, default=22050)
    parser.add_argument("--hop", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="the voice's name (default: OUTDIR's file name)")
    args = parser.parse_args()
    if args.hop < 1 or args.sample_rate < 1:
        parser.error("--hop and --sample-rate must be positive")

    torch.manual_seed(args.seed)
    id_map = phoneme_id_map()
    num_symbols = len(id_map)
    model = TinyVits(num_symbols, args.hop).eval()
    scripted = torch.jit.script(model)

    os.makedirs(args.outdir, exist_ok=True)
    scripted.save(os.path.join(args.outdir, "voice.ts.pt"))
    config = {
        "audio": {"sample_rate": args.sample_rate},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_id_map": id_map,
        "num_symbols": num_symbols,
        "hop_length": args.hop,
        "note": "random weights: noise-like audio of the right length, not speech",
    }
    if args.name:
        config["name"] = args.name
    with open(os.path.join(args.outdir, "voice.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    # Self-check: the length is what the durations imply.
    with torch.no_grad():
        ids = torch.tensor([[1, 0, 10, 0, 2]], dtype=torch.long)
        lengths = torch.tensor([5], dtype=torch.long)
        scales = torch.tensor([0.667, 1.0, 0.8])
        audio = scripted(ids, lengths, scales)
        expected = int(scripted.durations(ids, lengths, scales).sum()) * args.hop
        assert audio.shape == (1, 1, expected), (audio.shape, expected)
    print(f"wrote {args.outdir}/voice.ts.pt and voice.json "
          f"({num_symbols} symbols, {args.sample_rate} Hz, hop {args.hop}; random weights)")


if __name__ == "__main__":
    main()
