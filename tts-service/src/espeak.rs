//! The eSpeak NG voice: a safe wrapper over libespeak-ng's C API (`speak_lib.h`), declared by
//! hand below (no bindgen) and linked by `build.rs`.
//!
//! # Why one thread
//! libespeak-ng keeps all of its state in globals (the selected voice, the parameters, the
//! synthesis callback, the translator's buffers) and is not thread-safe. Every call into it
//! therefore runs on one dedicated thread, started on first use and living for the rest of
//! the process; callers send it a request over a channel and wait for the answer. Requests are
//! served one at a time, in order, so the voice and rate set for one request cannot leak into
//! another. The callback that collects audio and events writes into a thread-local on that
//! thread, which is safe because in `AUDIO_OUTPUT_SYNCHRONOUS` mode libespeak-ng calls it on
//! the thread inside `espeak_Synth`.
//!
//! # Timings
//! libespeak-ng is initialised with `espeakINITIALIZE_PHONEME_EVENTS`, so the callback's event
//! lists carry an `espeakEVENT_PHONEME` event per phoneme (its eSpeak ASCII mnemonic, at most
//! 8 bytes, in `id.string`) at `audio_position` milliseconds into the output. A phoneme lasts
//! until the next one starts; the last one until the end of the audio. Sentences start at
//! `espeakEVENT_SENTENCE` events and last until the next sentence (or the end).

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_short};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};
use std::thread;

/// Slowest and fastest speaking rates libespeak-ng accepts, in words per minute.
pub const RATE_WPM_MIN: u32 = 80;
/// See [`RATE_WPM_MIN`].
pub const RATE_WPM_MAX: u32 = 450;
/// libespeak-ng's normal speaking rate, in words per minute.
pub const RATE_WPM_DEFAULT: u32 = 175;
/// The voice used when a request names none.
pub const DEFAULT_VOICE: &str = "en-us";

/// The FFI surface: exactly the parts of `speak_lib.h` (API revision 12, libespeak-ng 1.51)
/// this module uses.
mod ffi {
    use std::ffi::{c_char, c_int, c_short, c_uint, c_void};

    // espeak_AUDIO_OUTPUT
    pub const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
    // options of espeak_Initialize
    pub const ESPEAK_INITIALIZE_PHONEME_EVENTS: c_int = 0x0001;
    pub const ESPEAK_INITIALIZE_DONT_EXIT: c_int = 0x8000;
    // espeak_ERROR
    pub const EE_OK: c_int = 0;
    // espeak_POSITION_TYPE
    pub const POS_CHARACTER: c_int = 1;
    // flags of espeak_Synth
    pub const ESPEAK_CHARS_UTF8: c_uint = 1;
    pub const ESPEAK_ENDPAUSE: c_uint = 0x1000;
    // espeak_PARAMETER
    pub const ESPEAK_RATE: c_int = 1;
    // espeak_EVENT_TYPE
    pub const EVENT_LIST_TERMINATED: c_int = 0;
    pub const EVENT_SENTENCE: c_int = 2;
    /// End of message: the last event of a synthesis (nothing to collect from it).
    #[allow(dead_code)]
    pub const EVENT_MSG_TERMINATED: c_int = 6;
    pub const EVENT_PHONEME: c_int = 7;

    /// `espeak_EVENT.id`: a C union of 8 bytes, aligned like a pointer.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union EventId {
        /// WORD and SENTENCE events.
        pub number: c_int,
        /// MARK and PLAY events (UTF-8, owned by libespeak-ng).
        pub name: *const c_char,
        /// PHONEME events: the mnemonic, NUL-terminated unless it fills all 8 bytes.
        pub string: [c_char; 8],
    }

    /// `espeak_EVENT`. On x86-64 (checked against the header with `offsetof`): `type` at 0,
    /// `unique_identifier` 4, `text_position` 8, `length` 12, `audio_position` 16, `sample`
    /// 20, `user_data` 24, `id` 32; 40 bytes in all. `type` is a C enum, an `int` here.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Event {
        pub kind: c_int,
        pub unique_identifier: c_uint,
        pub text_position: c_int,
        pub length: c_int,
        pub audio_position: c_int,
        pub sample: c_int,
        pub user_data: *mut c_void,
        pub id: EventId,
    }

    /// `espeak_VOICE` (40 bytes on x86-64).
    #[repr(C)]
    pub struct Voice {
        pub name: *const c_char,
        /// Pairs of (priority byte, NUL-terminated language), ended by an extra NUL.
        pub languages: *const c_char,
        pub identifier: *const c_char,
        pub gender: u8,
        pub age: u8,
        pub variant: u8,
        pub xx1: u8,
        pub score: c_int,
        pub spare: *mut c_void,
    }

    pub type SynthCallback =
        unsafe extern "C" fn(wav: *mut c_short, numsamples: c_int, events: *mut Event) -> c_int;

    #[link(name = "espeak-ng")]
    unsafe extern "C" {
        pub fn espeak_Initialize(
            output: c_int,
            buflength: c_int,
            path: *const c_char,
            options: c_int,
        ) -> c_int;
        pub fn espeak_SetSynthCallback(callback: Option<SynthCallback>);
        pub fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
        pub fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
        pub fn espeak_Synth(
            text: *const c_void,
            size: usize,
            position: c_uint,
            position_type: c_int,
            end_position: c_uint,
            flags: c_uint,
            unique_identifier: *mut c_uint,
            user_data: *mut c_void,
        ) -> c_int;
        pub fn espeak_ListVoices(voice_spec: *mut Voice) -> *mut *const Voice;
    }
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<ffi::Event>() == 40);
    assert!(std::mem::offset_of!(ffi::Event, audio_position) == 16);
    assert!(std::mem::offset_of!(ffi::Event, id) == 32);
    assert!(std::mem::size_of::<ffi::Voice>() == 40);
};

/// What can go wrong asking eSpeak NG for speech. `Clone` because the engine's start-up
/// failure is kept and handed to every later caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspeakError {
    #[error("text is empty: give at least one non-whitespace character")]
    EmptyText,
    #[error("text contains a NUL character")]
    NulInText,
    #[error("unknown eSpeak NG voice {0:?} (see the voice list)")]
    UnknownVoice(String),
    #[error("speaking rate {0} wpm is outside {RATE_WPM_MIN}..={RATE_WPM_MAX}")]
    RateOutOfRange(u32),
    #[error("eSpeak NG could not start: {0}")]
    Init(String),
    #[error("eSpeak NG failed: {0}")]
    Synthesis(String),
}

pub type Result<T, E = EspeakError> = std::result::Result<T, E>;

/// One phoneme of the output, in eSpeak's ASCII mnemonics (`h`, `@`, `l`, `oU`, `_:` ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phoneme {
    pub symbol: String,
    pub start_ms: u32,
    pub duration_ms: u32,
}

/// Synthesized speech: mono PCM samples, with the phonemes and sentences in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    /// Hz; 22050 for eSpeak NG.
    pub sample_rate: u32,
    /// Mono, signed 16-bit.
    pub samples: Vec<i16>,
    /// In time order, contiguous from the first phoneme event to the end of the audio.
    pub phonemes: Vec<Phoneme>,
    /// `(start_ms, end_ms)` of each sentence, in order.
    pub sentences: Vec<(u32, u32)>,
}

impl Speech {
    /// The audio's length in milliseconds.
    pub fn duration_ms(&self) -> u32 {
        samples_to_ms(self.samples.len(), self.sample_rate)
    }
}

/// A voice eSpeak NG offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceInfo {
    /// The voice's given name, e.g. `English_(America)` (for display).
    pub name: String,
    /// Its preferred language, e.g. `en-us`: what to pass to [`Espeak::synthesize`].
    pub language: String,
    /// Its file within espeak-ng-data/voices, e.g. `gmw/en-US` (also accepted as a voice).
    pub identifier: String,
}

/// A handle on the process's one eSpeak NG engine. Cheap to clone and to share between
/// threads; all handles talk to the same dedicated thread (see the module docs).
#[derive(Clone)]
pub struct Espeak {
    requests: Sender<Request>,
    sample_rate: u32,
}

impl std::fmt::Debug for Espeak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Espeak")
            .field("sample_rate", &self.sample_rate)
            .finish()
    }
}

enum Request {
    Synthesize {
        text: CString,
        voice: CString,
        voice_name: String,
        rate_wpm: u32,
        reply: Sender<Result<Speech>>,
    },
    ListVoices {
        reply: Sender<Vec<VoiceInfo>>,
    },
    /// Nothing to do but answer: see [`Espeak::answer`].
    Answer {
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

static ENGINE: OnceLock<Result<Espeak, EspeakError>> = OnceLock::new();

impl Espeak {
    /// The engine, started on first use (initialising libespeak-ng on its own thread). A
    /// failure to start is remembered and returned to every later caller.
    pub fn get() -> Result<Espeak> {
        ENGINE.get_or_init(start).clone()
    }

    /// Hz of everything this engine produces.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Speaks `text` (plain UTF-8 text, no SSML, no `[[phonemes]]`) with `voice` (a language
    /// such as `en-us` or `en`, or a voice identifier such as `gmw/en-US`; libespeak-ng 1.51
    /// does not accept given names like `English_(America)` here) at `rate_wpm` words per
    /// minute. Blocks while other requests are served before it.
    pub fn synthesize(&self, text: &str, voice: &str, rate_wpm: u32) -> Result<Speech> {
        if text.trim().is_empty() {
            return Err(EspeakError::EmptyText);
        }
        if !(RATE_WPM_MIN..=RATE_WPM_MAX).contains(&rate_wpm) {
            return Err(EspeakError::RateOutOfRange(rate_wpm));
        }
        let text = CString::new(text).map_err(|_| EspeakError::NulInText)?;
        let voice_c =
            CString::new(voice).map_err(|_| EspeakError::UnknownVoice(voice.to_owned()))?;
        if voice.trim().is_empty() {
            return Err(EspeakError::UnknownVoice(voice.to_owned()));
        }
        let (reply, answer) = mpsc::channel();
        self.send(Request::Synthesize {
            text,
            voice: voice_c,
            voice_name: voice.to_owned(),
            rate_wpm,
            reply,
        })?;
        answer.recv().map_err(|_| engine_gone())?
    }

    /// Every voice eSpeak NG has data for, in its order.
    pub fn list_voices(&self) -> Result<Vec<VoiceInfo>> {
        let (reply, answer) = mpsc::channel();
        self.send(Request::ListVoices { reply })?;
        answer.recv().map_err(|_| engine_gone())
    }

    /// Completes once the engine's thread has taken a request that does nothing, in its turn
    /// behind the requests queued before it: proof that the thread is not stuck in
    /// libespeak-ng (the service's watchdog heartbeat). Async, so that a wedged thread
    /// blocks no runtime thread; the caller bounds the wait.
    pub async fn answer(&self) -> Result<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Request::Answer { reply })?;
        answer.await.map_err(|_| engine_gone())
    }

    fn send(&self, request: Request) -> Result<()> {
        self.requests.send(request).map_err(|_| engine_gone())
    }
}

fn engine_gone() -> EspeakError {
    EspeakError::Synthesis("the eSpeak NG thread has stopped".into())
}

/// Starts the engine's thread and waits for libespeak-ng to initialise on it.
fn start() -> Result<Espeak> {
    let (requests, inbox) = mpsc::channel::<Request>();
    let (ready, started) = mpsc::channel::<Result<u32>>();
    thread::Builder::new()
        .name("espeak-ng".into())
        .spawn(move || {
            // SAFETY: this thread is the only one that ever calls libespeak-ng.
            let rate = unsafe {
                ffi::espeak_Initialize(
                    ffi::AUDIO_OUTPUT_SYNCHRONOUS,
                    0,
                    std::ptr::null(),
                    ffi::ESPEAK_INITIALIZE_PHONEME_EVENTS | ffi::ESPEAK_INITIALIZE_DONT_EXIT,
                )
            };
            if rate <= 0 {
                let _ = ready.send(Err(EspeakError::Init(format!(
                    "espeak_Initialize returned {rate} (is espeak-ng-data installed?)"
                ))));
                return;
            }
            // SAFETY: as above; the callback only touches this thread's COLLECTOR.
            unsafe { ffi::espeak_SetSynthCallback(Some(synth_callback)) };
            let sample_rate = rate as u32;
            let _ = ready.send(Ok(sample_rate));
            for request in inbox {
                match request {
                    Request::Synthesize {
                        text,
                        voice,
                        voice_name,
                        rate_wpm,
                        reply,
                    } => {
                        let _ = reply.send(synthesize_here(
                            &text,
                            &voice,
                            &voice_name,
                            rate_wpm,
                            sample_rate,
                        ));
                    }
                    Request::ListVoices { reply } => {
                        let _ = reply.send(list_voices_here());
                    }
                    Request::Answer { reply } => {
                        let _ = reply.send(());
                    }
                }
            }
        })
        .map_err(|e| EspeakError::Init(format!("cannot start its thread: {e}")))?;
    let sample_rate = started
        .recv()
        .map_err(|_| EspeakError::Init("its thread stopped while starting".into()))??;
    Ok(Espeak {
        requests,
        sample_rate,
    })
}

/// What the callback gathers during one `espeak_Synth`.
#[derive(Default)]
struct Collector {
    samples: Vec<i16>,
    /// (ms, mnemonic) of each phoneme event.
    phonemes: Vec<(u32, String)>,
    /// ms of each sentence event.
    sentences: Vec<u32>,
}

thread_local! {
    static COLLECTOR: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// libespeak-ng's synthesis callback: append audio, record phoneme and sentence events.
unsafe extern "C" fn synth_callback(
    wav: *mut c_short,
    numsamples: c_int,
    events: *mut ffi::Event,
) -> c_int {
    COLLECTOR.with_borrow_mut(|collector| {
        let Some(collector) = collector.as_mut() else {
            return 1; // not ours: abort
        };
        if !wav.is_null() && numsamples > 0 {
            // SAFETY: libespeak-ng hands `numsamples` valid samples at `wav`.
            let audio = unsafe { std::slice::from_raw_parts(wav, numsamples as usize) };
            collector.samples.extend_from_slice(audio);
        }
        let mut event = events;
        while !event.is_null() {
            // SAFETY: the list is an array of events ended by one of type LIST_TERMINATED.
            let e = unsafe { *event };
            let at = e.audio_position.max(0) as u32;
            match e.kind {
                ffi::EVENT_LIST_TERMINATED => break,
                ffi::EVENT_PHONEME => {
                    // SAFETY: PHONEME events use `id.string`: up to 8 bytes, NUL-terminated
                    // unless all 8 are used.
                    let raw = unsafe { e.id.string };
                    let bytes: Vec<u8> = raw
                        .iter()
                        .map(|&c| c as u8)
                        .take_while(|&b| b != 0)
                        .collect();
                    collector
                        .phonemes
                        .push((at, String::from_utf8_lossy(&bytes).into_owned()));
                }
                ffi::EVENT_SENTENCE => collector.sentences.push(at),
                _ => {}
            }
            // SAFETY: not past the terminator yet.
            event = unsafe { event.add(1) };
        }
        0
    })
}

/// One request, on the engine's thread.
fn synthesize_here(
    text: &CStr,
    voice: &CStr,
    voice_name: &str,
    rate_wpm: u32,
    sample_rate: u32,
) -> Result<Speech> {
    // SAFETY (all calls below): on the engine's thread, with valid NUL-terminated strings.
    if unsafe { ffi::espeak_SetVoiceByName(voice.as_ptr()) } != ffi::EE_OK {
        return Err(EspeakError::UnknownVoice(voice_name.to_owned()));
    }
    let status = unsafe { ffi::espeak_SetParameter(ffi::ESPEAK_RATE, rate_wpm as c_int, 0) };
    if status != ffi::EE_OK {
        return Err(EspeakError::Synthesis(format!(
            "espeak_SetParameter(rate) returned {status}"
        )));
    }
    COLLECTOR.with_borrow_mut(|c| *c = Some(Collector::default()));
    let bytes = text.to_bytes_with_nul();
    let status = unsafe {
        ffi::espeak_Synth(
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            ffi::POS_CHARACTER,
            0,
            ffi::ESPEAK_CHARS_UTF8 | ffi::ESPEAK_ENDPAUSE,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let collected = COLLECTOR.with_borrow_mut(Option::take).unwrap_or_default();
    if status != ffi::EE_OK {
        return Err(EspeakError::Synthesis(format!(
            "espeak_Synth returned {status}"
        )));
    }
    if collected.samples.is_empty() {
        return Err(EspeakError::Synthesis("no audio came back".into()));
    }
    Ok(assemble(collected, sample_rate))
}

/// Turns start times into contiguous spans that end with the audio.
fn assemble(collected: Collector, sample_rate: u32) -> Speech {
    let end = samples_to_ms(collected.samples.len(), sample_rate);
    let mut starts = collected.phonemes;
    // Events come in order; keep that guaranteed, and keep every span inside the audio.
    starts.sort_by_key(|(at, _)| *at);
    for (at, _) in &mut starts {
        *at = (*at).min(end);
    }
    // Zero-length phonemes (the final pause marker, often) carry nothing; dropping them keeps
    // the rest contiguous.
    let phonemes = starts
        .iter()
        .enumerate()
        .map(|(i, (start, symbol))| {
            let next = starts.get(i + 1).map_or(end, |(at, _)| *at);
            Phoneme {
                symbol: symbol.clone(),
                start_ms: *start,
                duration_ms: next - start,
            }
        })
        .filter(|p| p.duration_ms > 0)
        .collect();
    let mut sentence_starts = collected.sentences;
    sentence_starts.sort_unstable();
    sentence_starts.dedup();
    if sentence_starts.first() != Some(&0) {
        // The audio before the first SENTENCE event belongs to the first sentence.
        match sentence_starts.first_mut() {
            Some(first) => *first = 0,
            None => sentence_starts.push(0),
        }
    }
    let sentences = sentence_starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            (
                start.min(end),
                sentence_starts.get(i + 1).copied().unwrap_or(end).min(end),
            )
        })
        .collect();
    Speech {
        sample_rate,
        samples: collected.samples,
        phonemes,
        sentences,
    }
}

fn samples_to_ms(samples: usize, sample_rate: u32) -> u32 {
    (samples as u64 * 1000 / u64::from(sample_rate.max(1))) as u32
}

/// Reads a C string that libespeak-ng owns; empty for NULL.
///
/// # Safety
/// `ptr` is NULL or a valid NUL-terminated string.
unsafe fn c_str(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: by the caller.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// The voice list, on the engine's thread.
fn list_voices_here() -> Vec<VoiceInfo> {
    let mut voices = Vec::new();
    // SAFETY: on the engine's thread; the list is NULL-terminated and owned by libespeak-ng.
    let mut entry = unsafe { ffi::espeak_ListVoices(std::ptr::null_mut()) };
    if entry.is_null() {
        return voices;
    }
    loop {
        // SAFETY: `entry` points into the NULL-terminated array.
        let voice = unsafe { *entry };
        if voice.is_null() {
            break;
        }
        // SAFETY: a valid voice entry; `languages` starts with a priority byte, then the
        // first (preferred) language, NUL-terminated.
        let info = unsafe {
            let voice = &*voice;
            let language = if voice.languages.is_null() {
                String::new()
            } else {
                c_str(voice.languages.add(1))
            };
            VoiceInfo {
                name: c_str(voice.name),
                language,
                identifier: c_str(voice.identifier),
            }
        };
        voices.push(info);
        // SAFETY: not past the terminating NULL yet.
        entry = unsafe { entry.add(1) };
    }
    voices
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speak(text: &str) -> Speech {
        Espeak::get()
            .unwrap()
            .synthesize(text, DEFAULT_VOICE, RATE_WPM_DEFAULT)
            .unwrap()
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
        (sum / samples.len() as f64).sqrt()
    }

    #[test]
    fn speaks_real_audio_with_phonemes_and_sentences() {
        let speech = speak("Hello world. This is Arbiter.");
        assert_eq!(speech.sample_rate, 22050);
        let duration = speech.duration_ms();
        assert!((1000..=5000).contains(&duration), "duration {duration} ms");
        let level = rms(&speech.samples);
        assert!(level > 300.0, "rms {level} looks like silence");

        assert!(speech.phonemes.len() > 10, "{:?}", speech.phonemes);
        let mut previous_end = speech.phonemes[0].start_ms;
        for p in &speech.phonemes {
            assert_eq!(p.start_ms, previous_end, "{:?}", speech.phonemes);
            assert!(p.start_ms + p.duration_ms <= duration);
            previous_end = p.start_ms + p.duration_ms;
        }
        assert_eq!(previous_end, duration);
        let symbols: Vec<&str> = speech.phonemes.iter().map(|p| p.symbol.as_str()).collect();
        assert!(
            symbols.contains(&"h") && symbols.contains(&"l"),
            "{symbols:?}"
        );

        assert_eq!(speech.sentences.len(), 2, "{:?}", speech.sentences);
        assert_eq!(speech.sentences[0].0, 0);
        assert_eq!(speech.sentences[0].1, speech.sentences[1].0);
        assert!(speech.sentences[1].0 > 300);
        assert_eq!(speech.sentences[1].1, duration);
    }

    #[test]
    fn rate_changes_duration() {
        let engine = Espeak::get().unwrap();
        let text = "The quick brown fox jumps over the lazy dog.";
        let slow = engine.synthesize(text, DEFAULT_VOICE, 100).unwrap();
        let fast = engine.synthesize(text, DEFAULT_VOICE, 350).unwrap();
        assert!(
            slow.duration_ms() > fast.duration_ms() * 2,
            "{} vs {}",
            slow.duration_ms(),
            fast.duration_ms()
        );
    }

    #[test]
    fn unknown_voice_is_a_clear_error_and_leaves_the_engine_working() {
        let engine = Espeak::get().unwrap();
        let err = engine
            .synthesize("Hello.", "no-such-voice-xyz", RATE_WPM_DEFAULT)
            .unwrap_err();
        assert_eq!(err, EspeakError::UnknownVoice("no-such-voice-xyz".into()));
        assert!(err.to_string().contains("no-such-voice-xyz"));
        assert!(
            engine
                .synthesize("Hello.", DEFAULT_VOICE, RATE_WPM_DEFAULT)
                .is_ok()
        );
    }

    #[test]
    fn empty_text_and_bad_rate_are_clear_errors() {
        let engine = Espeak::get().unwrap();
        assert_eq!(
            engine.synthesize("", DEFAULT_VOICE, 175),
            Err(EspeakError::EmptyText)
        );
        assert_eq!(
            engine.synthesize("  \n\t", DEFAULT_VOICE, 175),
            Err(EspeakError::EmptyText)
        );
        assert_eq!(
            engine.synthesize("a\0b", DEFAULT_VOICE, 175),
            Err(EspeakError::NulInText)
        );
        assert_eq!(
            engine.synthesize("Hi.", DEFAULT_VOICE, 10),
            Err(EspeakError::RateOutOfRange(10))
        );
        assert!(EspeakError::EmptyText.to_string().contains("empty"));
    }

    #[test]
    fn lists_voices_including_english() {
        let voices = Espeak::get().unwrap().list_voices().unwrap();
        assert!(voices.len() > 20, "{} voices", voices.len());
        assert!(voices.iter().any(|v| v.language == "en-us"), "{voices:?}");
        for name in ["en", "en-us"] {
            assert!(
                Espeak::get().unwrap().synthesize("Hi.", name, 175).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn concurrent_calls_are_serialized() {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                thread::spawn(move || {
                    let engine = Espeak::get().unwrap();
                    let (voice, rate) = if i % 2 == 0 {
                        ("en-us", 175)
                    } else {
                        ("en", 300)
                    };
                    let speech = engine
                        .synthesize(&format!("Thread number {i} speaks."), voice, rate)
                        .unwrap();
                    assert_eq!(speech.sample_rate, 22050);
                    assert!(speech.duration_ms() > 300);
                    assert!(!speech.phonemes.is_empty());
                    speech.duration_ms()
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    }
}
