"""Speech from arbiter-tts (``arbiter.tts.v1.Tts``), the persistent TTS service.

``Synthesize`` streams one chunk per sentence as soon as it is spoken, so the time to the
first chunk is what a listener waits, and the whole is what a file costs; :func:`say`
reports both, as ``arbiter-tts say`` does (tts-service/src/client/say.rs), and writes the
same file: the chunks' raw PCM (s16le, mono) joined under one WAV header.
"""

from __future__ import annotations

import os
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Union

import grpc

from ._address import Address, default_tts_address, parse_address
from ._errors import ArbiterError, from_rpc
from ._pb import tpb, tpb_grpc


@dataclass(frozen=True)
class Speech:
    """What :func:`say` wrote, and how long it took."""

    #: The WAV file written.
    path: Path
    sample_rate: int
    #: Samples of mono 16-bit PCM in the file.
    samples: int
    #: Chunks the service streamed (one per sentence, or part of one).
    chunks: int
    #: Seconds from the request to the first chunk, and to the last.
    first_audio: float
    total: float
    #: The sentences spoken, in order.
    sentences: List[str] = field(default_factory=list)
    #: The mouth shapes over the whole utterance (the wire's Viseme messages).
    visemes: List[Any] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The audio's length in seconds."""
        return self.samples / self.sample_rate if self.sample_rate else 0.0


class Tts:
    """A client of arbiter-tts. `address` is its socket (default: ``$ARBITER_TTS_SOCKET``,
    else ``$XDG_RUNTIME_DIR/arbiter/tts.sock`` or ``/run/arbiter/tts.sock``) or
    ``host:port`` where it was started with ``--listen``."""

    def __init__(self, address: Optional[Address] = None, timeout: float = 60.0) -> None:
        self._target = parse_address(address, default_tts_address())
        self.timeout = timeout
        self.channel = grpc.insecure_channel(self._target.target)
        self._tts = tpb_grpc.TtsStub(self.channel)

    @property
    def address(self) -> str:
        return str(self._target)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Tts":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def voices(self) -> List[Any]:
        """The voices a request may name (the wire's Voice messages)."""
        try:
            return list(self._tts.ListVoices(tpb.ListVoicesRequest(), timeout=self.timeout).voices)
        except grpc.RpcError as error:
            raise from_rpc(error, ArbiterError, self.address) from None

    def say(
        self,
        text: str,
        voice: Optional[str] = None,
        out: Union[str, "os.PathLike[str]"] = "out.wav",
        speaking_rate: float = 0.0,
    ) -> Speech:
        """Speaks `text` with `voice` (None: the service's default) and writes it to `out`
        as a WAV file; returns what was written and the timings. Raises ArbiterError with
        the service's code and message (INVALID_ARGUMENT for an unknown voice or a text over
        the limit, RESOURCE_EXHAUSTED when too many streams run)."""
        request = tpb.SynthesizeRequest(
            text=text,
            voice=voice or "",
            speaking_rate=speaking_rate,
            format=tpb.AUDIO_FORMAT_PCM_S16LE,
        )
        start = time.monotonic()
        first: Optional[float] = None
        pcm = bytearray()
        rate = 0
        chunks = 0
        sentences: List[str] = []
        visemes: List[Any] = []
        try:
            for chunk in self._tts.Synthesize(request, timeout=self.timeout):
                if first is None:
                    first = time.monotonic() - start
                rate = chunk.sample_rate
                chunks += 1
                pcm += chunk.audio
                if chunk.text:
                    sentences.append(chunk.text)
                visemes.extend(chunk.visemes)
        except grpc.RpcError as error:
            raise from_rpc(error, ArbiterError, self.address) from None
        total = time.monotonic() - start
        if len(pcm) % 2:
            raise ArbiterError(f"the service sent {len(pcm)} bytes of 16-bit PCM: an odd count")
        path = Path(out)
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(max(rate, 1))
            wav.writeframes(bytes(pcm))
        return Speech(
            path=path,
            sample_rate=rate,
            samples=len(pcm) // 2,
            chunks=chunks,
            first_audio=total if first is None else first,
            total=total,
            sentences=sentences,
            visemes=visemes,
        )
