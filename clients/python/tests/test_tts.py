"""Speech from Python through the real ``arbiter-tts serve`` (eSpeak NG, on the CPU): the
WAV ``say`` writes, its timings and sentences, the default socket, and a refusal."""

from __future__ import annotations

import wave
from pathlib import Path

import grpc
import pytest

import arbiter


def test_say_writes_the_speech_to_a_wav_and_reports_its_timings(start_tts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    socket = start_tts()
    out = tmp_path / "hello.wav"
    speech = arbiter.say("Hello there. Second sentence.", out=out, address=socket)
    assert speech.path == out
    assert speech.chunks == 2, "one chunk per sentence"
    assert speech.sentences == ["Hello there.", "Second sentence."]
    assert speech.sample_rate == 22050
    assert 0 < speech.first_audio <= speech.total
    assert speech.visemes, "visemes come with the audio"
    with wave.open(str(out), "rb") as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 22050
        assert wav.getnframes() == speech.samples > 0
    assert 0.5 < speech.seconds < 10, speech.seconds

    names = [v.name for v in arbiter.voices(address=socket)]
    assert "en-us" in names, names
    speech = arbiter.say("Hi.", voice="en-us", out=tmp_path / "hi.wav", address=socket)
    assert speech.chunks == 1 and speech.samples > 0


def test_say_finds_the_service_on_its_default_socket_and_reports_refusals(
    start_tts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    socket = start_tts()
    monkeypatch.setenv("ARBITER_TTS_SOCKET", str(socket))
    speech = arbiter.say("Hello.", out=tmp_path / "default.wav")
    assert speech.samples > 0
    with pytest.raises(arbiter.ArbiterError) as raised:
        arbiter.say("Hi.", voice="klingon", out=tmp_path / "never.wav")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ListVoices" in raised.value.message, raised.value.message
    assert not (tmp_path / "never.wav").exists()
