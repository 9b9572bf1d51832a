//! `arbiter-tts` as a library: the parts of the text-to-speech service that do not depend on
//! gRPC or on a lease, so they can be tested (and benchmarked) on their own and the service
//! binary (`main.rs`) stays a thin shell around them.
//!
//! - [`card`]: which GPU the service runs on, settled before CUDA starts (`--gpu`, an
//!   inherited `CUDA_VISIBLE_DEVICES`, the supervisor's status), and `--lease-from-env`'s
//!   claim; [`compute`]: marking GPU work in the card's compute gate, so video jobs yield.
//! - [`espeak`]: the eSpeak NG voice and text front end (phonemes with timings), over
//!   libespeak-ng, serialized through one thread because the C library is global state.
//! - [`sentences`]: splits text into sentences, so audio can be streamed per sentence.
//! - [`viseme`]: the documented phoneme-to-viseme table and the viseme timeline of a speech.
//! - [`torchscript`]: TorchScript voices (VITS/Piper style: phoneme ids in, waveform out)
//!   from a directory with `voice.ts.pt` and a Piper-style `voice.json`.
//! - [`audio`]: audio a client sends to be lip-synced (WAV or raw PCM), checked and mixed to
//!   mono; [`audio_viseme`]: a viseme timeline from audio alone (its loudness).
//! - [`lip_sync`]: the optional TorchScript lip-sync model (face and audio in, mouth frames
//!   out) and its own preemptible lease, given back when the supervisor reclaims it.
//! - [`voice_residency`]: a TorchScript voice loaded on first use under a lease of its own
//!   ([`model_lease`]) and unloaded after its [`keep_alive`]; [`model_sizes`]: what each
//!   model was measured to need on the GPU, which sizes its next lease.
//! - [`service`]: `arbiter.tts.v1.Tts`, streaming a sentence at a time; [`server`]: the
//!   listeners, reflection and health around it; [`status`]: errors to gRPC codes;
//!   [`lease`]: holding the GPU memory from the supervisor, re-acquired after a loss;
//!   [`metrics`]: what the calls record for Prometheus (`--metrics-listen`).
//!
//! WAV files are the root crate's (`arbiter::wav`), and the clients of a running service
//! (`arbiter-tts say`, `lip-sync`) live in `arbiter-tts-client`, which does not link
//! libtorch: a client call should not pay for loading it.
//!
//! Dependencies point one way, from the edge down: `server` → `service` → `status` → the
//! domain modules (`espeak`, `torchscript`, `lip_sync`, `audio`, ...). The domain modules
//! know nothing of gRPC, and every error `status` maps is defined among them, so the one
//! place that picks codes never has to reach up into the service that uses it.

pub mod audio;
pub mod audio_viseme;
pub mod card;
pub mod compute;
pub mod espeak;
pub mod keep_alive;
pub mod lease;
pub mod lip_sync;
pub mod metrics;
pub mod model_lease;
pub mod model_sizes;
pub mod sentences;
pub mod server;
pub mod service;
pub mod status;
pub mod torchscript;
pub mod viseme;
pub mod voice_residency;

/// The module's old spelling, kept only because `tests/lipsync_model.rs` still imports
/// `arbiter_tts::lipsync::…`; drop it once those tests import [`lip_sync`].
#[doc(hidden)]
pub use lip_sync as lipsync;
