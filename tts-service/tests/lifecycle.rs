//! Models that load on first use and leave when idle, against the real supervisor binary on
//! a simulated GPU: a TorchScript voice and the lip-sync model hold nothing until asked for,
//! take a lease of their own for the load, give it back after their keep-alive (the
//! service's default or the request's: `0` unloads at once, negative keeps), and requests
//! that arrive during a load share it. The leases are asked with `--voice-lease-bytes` and
//! `--lipsync-lease-bytes`, since there is no CUDA here to measure with; ListVoices,
//! GetLipSyncStatus, ListLeases and WatchEvents show each step.

use std::path::Path;
use std::time::Duration;

use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::GIB;
use arbiter_test_kit::events::Feed;
use arbiter_test_kit::leases::{Client, leases};
use arbiter_test_kit::media::{picture, tone};
use arbiter_test_kit::processes::Process;
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tts::{
    self, SOON, connected, face_request, lip_sync_stream, make_voice, pcm,
};
use arbiter_test_kit::waiting::eventually;
use pb::lip_sync_request::Input;
use pb::tts_client::TtsClient;
use spb::event::Kind;
use tonic::Code;
use tonic::transport::Channel;

const VOICE: &str = "tiny-vits";
const VOICE_HOLDER: &str = "arbiter-tts/voice/tiny-vits";

struct Served {
    _tts: Process,
    _dir: tempfile::TempDir,
    tts: TtsClient<Channel>,
}

/// arbiter-tts with a generated voice (1 GiB leases) and `extra` flags, against `supervisor`.
async fn serve(supervisor: &Path, extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().expect("a temp dir");
    let voice = dir.path().join(VOICE);
    make_voice(&voice, &["--sample-rate", "16000", "--hop", "160"]);
    let socket = dir.path().join("tts.sock");
    let state = dir.path().join("state");
    let mut args = vec![
        "--supervisor".to_string(),
        supervisor.display().to_string(),
        "--voice-dir".into(),
        voice.display().to_string(),
        "--voice-lease-bytes".into(),
        "1GiB".into(),
        "--state-dir".into(),
        state.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = tts::serve(&socket, &args);
    let tts = connected(&socket).await;
    Served {
        _tts: process,
        _dir: dir,
        tts,
    }
}

fn held<'a>(leases: &'a [spb::Lease], holder: &str) -> Vec<&'a spb::Lease> {
    leases
        .iter()
        .filter(|l| l.holder.starts_with(&format!("{holder} (pid")))
        .collect()
}

async fn residency(tts: &TtsClient<Channel>) -> pb::ModelResidency {
    let voices = tts
        .clone()
        .list_voices(pb::ListVoicesRequest {})
        .await
        .expect("ListVoices")
        .into_inner()
        .voices;
    let voice = voices
        .into_iter()
        .find(|v| v.name == VOICE)
        .expect("the TorchScript voice is listed");
    assert_eq!(voice.backend, "torchscript");
    voice
        .residency
        .expect("a TorchScript voice reports its residency")
}

fn say(keep_alive: Option<Duration>) -> pb::SynthesizeRequest {
    say_for(keep_alive.map(|d| prost_types::Duration::try_from(d).unwrap()))
}

fn say_for(keep_alive: Option<prost_types::Duration>) -> pb::SynthesizeRequest {
    pb::SynthesizeRequest {
        text: "Hello there. Goodbye.".into(),
        voice: VOICE.into(),
        keep_alive,
        ..Default::default()
    }
}

/// Speaks the whole of `request`; returns the audio's bytes.
async fn speak(
    tts: &TtsClient<Channel>,
    request: pb::SynthesizeRequest,
) -> Result<usize, tonic::Status> {
    let mut stream = tts.clone().synthesize(request).await?.into_inner();
    let mut bytes = 0;
    while let Some(chunk) = stream.message().await? {
        bytes += chunk.audio.len();
    }
    Ok(bytes)
}

async fn voice_leases(client: &Client) -> Vec<spb::Lease> {
    held(&leases(client).await, VOICE_HOLDER)
        .into_iter()
        .cloned()
        .collect()
}

async fn unloaded(client: &Client, tts: &TtsClient<Channel>, what: &str) -> pb::ModelResidency {
    eventually(SOON, what, || async {
        let residency = residency(tts).await;
        (!residency.loaded && voice_leases(client).await.is_empty()).then_some(residency)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_loads_on_first_use_under_its_own_lease_and_leaves_after_its_keep_alive() {
    let supervisor = Supervisor::builder().gpus("10GiB").start().await;
    let client = supervisor.unix_client().await;
    let served = serve(supervisor.socket(), &["--keep-alive", "2s"]).await;

    // Listed, holding nothing.
    let before = residency(&served.tts).await;
    assert!(!before.loaded, "{before:?}");
    assert_eq!((before.loads, before.lease_id.as_str()), (0, ""));
    assert!(before.note.contains("first request"), "{before:?}");
    assert!(voice_leases(&client).await.is_empty());

    let audio = speak(&served.tts, say(None)).await.expect("speaks");
    assert!(audio > 0);
    let leases = voice_leases(&client).await;
    assert_eq!(leases.len(), 1, "one lease for the voice: {leases:#?}");
    assert_eq!(leases[0].bytes, GIB);
    assert!(!leases[0].preemptible);
    assert_eq!(leases[0].priority, spb::Priority::Interactive as i32);
    // The request's hold ends just after its last chunk.
    let loaded = eventually(SOON, "the voice idle after the request", || async {
        let r = residency(&served.tts).await;
        (r.in_use == 0).then_some(r)
    })
    .await;
    assert!(loaded.loaded, "{loaded:?}");
    assert_eq!(loaded.device, "cpu");
    assert_eq!(loaded.lease_id, leases[0].lease_id);
    assert_eq!(
        (loaded.lease_bytes, loaded.loads, loaded.in_use),
        (GIB, 1, 0)
    );
    let unload_at =
        std::time::SystemTime::try_from(loaded.unload_at.expect("a deadline while idle"))
            .expect("a time");
    let ahead = unload_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        ahead <= Duration::from_secs(2),
        "unloads within its 2 s keep-alive: {ahead:?}"
    );

    // Past the keep-alive: model dropped, lease released (not revoked).
    let gone = unloaded(&client, &served.tts, "the idle voice to unload").await;
    assert_eq!(gone.unloads, 1, "{gone:?}");
    assert!(gone.note.contains("keep-alive"), "{gone:?}");
    assert_eq!(gone.lease_bytes, 0);

    // The next request loads it again, under a new lease.
    speak(&served.tts, say(None)).await.expect("speaks again");
    let again = residency(&served.tts).await;
    assert_eq!((again.loaded, again.loads), (true, 2), "{again:?}");
    assert_ne!(again.lease_id, loaded.lease_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_keep_alive_of_zero_unloads_at_once_and_a_negative_one_keeps() {
    let supervisor = Supervisor::builder().gpus("10GiB").start().await;
    let client = supervisor.unix_client().await;
    let served = serve(supervisor.socket(), &["--keep-alive", "1s"]).await;

    speak(&served.tts, say(Some(Duration::ZERO)))
        .await
        .expect("speaks");
    let gone = unloaded(&client, &served.tts, "keep_alive 0 to unload at once").await;
    assert_eq!((gone.loads, gone.unloads), (1, 1));

    speak(
        &served.tts,
        say_for(Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        })),
    )
    .await
    .expect("speaks");
    let kept = eventually(SOON, "the kept voice idle", || async {
        let r = residency(&served.tts).await;
        (r.in_use == 0).then_some(r)
    })
    .await;
    assert!(kept.loaded && kept.keep_forever, "{kept:?}");
    assert!(kept.unload_at.is_none(), "kept: no deadline: {kept:?}");
    // Well past the 1 s default, still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = residency(&served.tts).await;
    assert!(still.loaded, "{still:?}");
    assert_eq!(voice_leases(&client).await.len(), 1);

    // The newest request's keep-alive wins: 0 now unloads it.
    speak(&served.tts, say(Some(Duration::ZERO)))
        .await
        .expect("speaks");
    unloaded(
        &client,
        &served.tts,
        "a later keep_alive 0 to unload the kept voice",
    )
    .await;

    // A keep-alive that reads as a mistake is refused, saying what to send.
    let refused = speak(
        &served.tts,
        say_for(Some(prost_types::Duration {
            seconds: 3 * 86_400,
            nanos: 0,
        })),
    )
    .await
    .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("negative value to keep"),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_wait_for_one_load() {
    let supervisor = Supervisor::builder().gpus("10GiB").start().await;
    let client = supervisor.unix_client().await;
    let served = serve(supervisor.socket(), &[]).await;
    let feed = Feed::watch(&client).await;

    let requests: Vec<_> = (0..4)
        .map(|_| {
            let tts = served.tts.clone();
            tokio::spawn(async move { speak(&tts, say(None)).await })
        })
        .collect();
    for request in requests {
        let bytes = request.await.expect("the task").expect("speaks");
        assert!(bytes > 0);
    }
    let residency = eventually(SOON, "the voice idle after the requests", || async {
        let r = residency(&served.tts).await;
        (r.in_use == 0).then_some(r)
    })
    .await;
    assert_eq!(residency.loads, 1, "{residency:?}");
    let grants = feed
        .kinds()
        .into_iter()
        .filter(|k| matches!(k, Kind::Granted(l) if l.holder.starts_with(VOICE_HOLDER)))
        .count();
    assert_eq!(grants, 1, "one lease, one load, for four first requests");
    assert_eq!(voice_leases(&client).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_waits_for_room_and_fails_clearly_when_none_comes() {
    let supervisor = Supervisor::builder().gpus("4GiB").start().await;
    let client = supervisor.unix_client().await;
    let served = serve(supervisor.socket(), &["--lease-wait", "1"]).await;
    // Someone holds 3.5 GiB: the voice's 1 GiB does not fit.
    let mut other = client
        .clone()
        .hold(spb::LeaseRequest {
            holder: "a video job".into(),
            bytes: 7 * GIB / 2,
            priority: spb::Priority::Critical as i32,
            ..Default::default()
        })
        .await
        .expect("Hold")
        .into_inner();
    other.message().await.expect("granted").expect("an update");

    let refused = speak(&served.tts, say(None)).await.expect_err("no room");
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("no GPU memory"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("--lease-wait"),
        "{}",
        refused.message()
    );
    let residency = residency(&served.tts).await;
    assert!(
        !residency.loaded && residency.note.contains("no lease"),
        "{residency:?}"
    );

    drop(other);
    eventually(SOON, "the other lease to end", || async {
        leases(&client)
            .await
            .iter()
            .all(|l| l.holder != "a video job")
            .then_some(())
    })
    .await;
    speak(&served.tts, say(None))
        .await
        .expect("room now: it loads");
}

async fn lip_sync_status(tts: &TtsClient<Channel>) -> pb::LipSyncStatus {
    tts.clone()
        .get_lip_sync_status(pb::GetLipSyncStatusRequest {})
        .await
        .expect("GetLipSyncStatus")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lip_sync_model_loads_on_its_first_render_and_leaves_when_idle() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let supervisor = Supervisor::builder().gpus("10GiB").start().await;
    let client = supervisor.unix_client().await;
    let (_tts, socket) = tts::serve_with_lipsync(
        dir.path(),
        supervisor.socket(),
        &["--keep-alive", "2s", "--state-dir", "none"],
    );
    let mut tts = connected(&socket).await;
    let lipsync_leases = || async { held(&leases(&client).await, "arbiter-tts/lipsync").len() };

    // Nothing asked for until a render wants the model.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lipsync_leases().await, 0);
    let status = lip_sync_status(&tts).await;
    assert_eq!(
        status.residency,
        pb::LipSyncResidency::Offloaded as i32,
        "{status:?}"
    );
    assert!(!status.model_residency.expect("model residency").loaded);

    let face = picture(64, 64, image::ImageFormat::Png);
    let request = |keep: Option<prost_types::Duration>| {
        let mut request = face_request(Input::Audio(pcm(&tone(0.5, 16000), 16000)), face.clone());
        request.keep_alive = keep;
        request
    };
    let chunks = lip_sync_stream(&mut tts, request(None))
        .await
        .expect("a render");
    assert!(
        chunks[0].render.as_ref().expect("a render header").leased,
        "{:?}",
        chunks[0]
    );
    assert_eq!(lipsync_leases().await, 1);
    let resident = lip_sync_status(&tts).await;
    assert_eq!(resident.residency, pb::LipSyncResidency::Resident as i32);
    let model = resident.model_residency.expect("model residency");
    assert!(model.loaded && model.unload_at.is_some(), "{model:?}");
    assert_eq!((model.loads, model.lease_bytes, model.in_use), (1, GIB, 0));

    // Idle past 2 s: released, and said so.
    let unloaded = eventually(SOON, "the idle lip-sync model to unload", || async {
        let status = lip_sync_status(&tts).await;
        (status.residency == pb::LipSyncResidency::Unloaded as i32).then_some(status)
    })
    .await;
    assert_eq!(lipsync_leases().await, 0);
    let model = unloaded.model_residency.clone().expect("model residency");
    assert_eq!((model.loaded, model.unloads), (false, 1), "{model:?}");
    assert!(unloaded.note.contains("keep-alive"), "{unloaded:?}");
    assert_eq!(unloaded.reclaims, 0, "an unload, not a reclaim");

    // The next render loads it again; keep_alive 0 sends it away as soon as it ends.
    let chunks = lip_sync_stream(
        &mut tts,
        request(Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        })),
    )
    .await
    .expect("a render");
    assert!(chunks[0].render.as_ref().unwrap().leased);
    eventually(SOON, "keep_alive 0 to unload the model", || async {
        let status = lip_sync_status(&tts).await;
        (status.residency == pb::LipSyncResidency::Unloaded as i32 && status.leases_granted == 2)
            .then_some(())
    })
    .await;
    assert_eq!(lipsync_leases().await, 0);
}
