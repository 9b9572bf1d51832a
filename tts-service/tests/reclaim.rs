//! The lip-sync model's preemptible lease against the real supervisor binary on a simulated
//! 10 GiB GPU: the service holds 2 GiB for its voices and, once a render wants the model, 1 GiB for the lip-sync model; a
//! non-preemptible 8 GiB request of a higher class cannot fit, the supervisor asks the
//! lip-sync lease to give back, the service releases it before the deadline (voices
//! untouched) and the waiter is granted; renders fall back to the CPU while the memory is
//! taken, and the first render after it is free again brings the model back under a new
//! lease, all visible in ListLeases and WatchEvents.

use std::time::{Duration, Instant};

use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::GIB;
use arbiter_test_kit::leases::leases;
use arbiter_test_kit::media::{picture, tone};
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tts::{self, SOON, connected, face_request, lip_sync_stream, pcm, secs};
use arbiter_test_kit::waiting::eventually;
use pb::lip_sync_request::Input;
use pb::tts_client::TtsClient;
use spb::event::Kind;
use tonic::transport::Channel;

const RECLAIM_GRACE: Duration = Duration::from_secs(5);

/// The service's lip-sync status; None while it does not answer.
async fn lip_sync_status(tts: &TtsClient<Channel>) -> Option<pb::LipSyncStatus> {
    let mut tts = tts.clone();
    Some(
        tts.get_lip_sync_status(pb::GetLipSyncStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

fn find<'a>(leases: &'a [spb::Lease], holder: &str) -> Option<&'a spb::Lease> {
    leases
        .iter()
        .find(|l| l.holder.starts_with(&format!("{holder} (pid")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaim_takes_the_lipsync_share_back_and_a_later_render_brings_it_back() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let supervisor = Supervisor::builder()
        .gpus("10GiB")
        .config(&format!(
            "[lease]\nreclaim_grace = \"{}s\"\n",
            RECLAIM_GRACE.as_secs()
        ))
        .start()
        .await;
    let client = supervisor.unix_client().await;
    let (_tts, tts_socket) =
        tts::serve_with_lipsync(dir.path(), supervisor.socket(), &["--lease-bytes", "2GiB"]);
    let mut tts = connected(&tts_socket).await;

    // The voices' lease (not preemptible) is held from the start; the lip-sync model's
    // only once a render wants the model (it loads on first use).
    let voices = eventually(SOON, "the service's lease", || async {
        find(&leases(&client).await, "arbiter-tts").cloned()
    })
    .await;
    assert!(find(&leases(&client).await, "arbiter-tts/lipsync").is_none());

    // The first render brings the model onto the GPU and runs under its lease.
    let face = picture(64, 64, image::ImageFormat::Png);
    let audio = || Input::Audio(pcm(&tone(1.2, 16000), 16000));
    let chunks = lip_sync_stream(&mut tts, face_request(audio(), face.clone()))
        .await
        .expect("a render under the lease");
    let render = chunks[0].render.clone().unwrap();
    assert!(render.leased, "{render:?}");
    assert_eq!(chunks.iter().filter(|c| c.frame.is_some()).count(), 30);
    let lipsync = find(&leases(&client).await, "arbiter-tts/lipsync")
        .expect("the lip-sync lease")
        .clone();
    assert_eq!((voices.bytes, voices.preemptible), (2 * GIB, false));
    assert_eq!((lipsync.bytes, lipsync.preemptible), (GIB, true));
    assert_eq!(lipsync.priority, spb::Priority::Batch as i32);
    assert_eq!(lipsync.form, spb::LeaseForm::Stream as i32);
    let status = lip_sync_status(&tts).await.expect("GetLipSyncStatus");
    assert_eq!(status.residency, pb::LipSyncResidency::Resident as i32);
    assert_eq!(status.lease_id, lipsync.lease_id);
    assert_eq!(status.leases_granted, 1);

    // Watch the supervisor's feed from here on.
    let mut events = client
        .clone()
        .watch_events(spb::WatchEventsRequest::default())
        .await
        .expect("WatchEvents")
        .into_inner();

    // 8 GiB, interactive, not preemptible: 7 GiB are free, so the supervisor must reclaim.
    let asked = Instant::now();
    let mut waiter = client
        .clone()
        .hold(spb::LeaseRequest {
            holder: "a big video job".into(),
            bytes: 8 * GIB,
            priority: spb::Priority::Interactive as i32,
            preemptible: false,
            ..Default::default()
        })
        .await
        .expect("Hold")
        .into_inner();
    let granted = loop {
        let update = tokio::time::timeout(RECLAIM_GRACE * 2, waiter.message())
            .await
            .expect("an answer for the waiter")
            .expect("the waiter's stream")
            .expect("an update");
        match update.update {
            Some(spb::lease_update::Update::Queued(_)) => continue,
            Some(spb::lease_update::Update::Granted(lease)) => break lease,
            other => panic!("the waiter got {other:?}"),
        }
    };
    assert_eq!(granted.bytes, 8 * GIB);
    assert!(
        asked.elapsed() < RECLAIM_GRACE,
        "granted within the reclaim deadline: {:?}",
        asked.elapsed()
    );

    // The feed: reclaim asked of the lip-sync lease, released by its holder (not revoked),
    // then the waiter granted, in that order.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|k| matches!(k, Kind::Granted(l) if l.lease_id == granted.lease_id))
    {
        let event = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .expect("events")
            .expect("the feed")
            .expect("an event");
        seen.extend(event.kind);
    }
    let position = |what: &str, found: &dyn Fn(&Kind) -> bool| {
        seen.iter()
            .position(found)
            .unwrap_or_else(|| panic!("no {what} event in {seen:#?}"))
    };
    let reclaim = position(
        "reclaim",
        &|k| matches!(k, Kind::Reclaim(r) if r.lease_id == lipsync.lease_id && r.bytes == GIB),
    );
    let released = position(
        "release",
        &|k| matches!(k, Kind::Released(r) if r.lease_id == lipsync.lease_id && r.reason == "released" && r.bytes == GIB),
    );
    let grant = position(
        "grant",
        &|k| matches!(k, Kind::Granted(l) if l.lease_id == granted.lease_id),
    );
    assert!(reclaim < released && released < grant, "{seen:#?}");
    assert!(
        !seen.iter().any(|k| matches!(k, Kind::Revoked(_))),
        "nothing revoked: {seen:#?}"
    );

    // The voices kept their lease and still speak; the lip-sync lease is gone.
    let now = leases(&client).await;
    assert_eq!(
        find(&now, "arbiter-tts").map(|l| &l.lease_id),
        Some(&voices.lease_id)
    );
    assert!(find(&now, "arbiter-tts/lipsync").is_none(), "{now:#?}");
    let mut speech = tts
        .synthesize(pb::SynthesizeRequest {
            text: "Still speaking.".into(),
            ..Default::default()
        })
        .await
        .expect("voices keep serving")
        .into_inner();
    assert!(!speech.message().await.unwrap().unwrap().audio.is_empty());
    // The service counts the reclaim once the supervisor has answered its Release, which
    // may come just after the waiter's grant.
    let status = eventually(SOON, "the reclaim to be counted", || async {
        let status = lip_sync_status(&tts).await?;
        (status.residency == pb::LipSyncResidency::Offloaded as i32 && status.reclaims == 1)
            .then_some(status)
    })
    .await;
    assert_eq!((status.reclaims, status.bytes_given_back), (1, GIB));
    assert!(status.last_reclaim_answer.is_some());

    // While the waiter holds the memory, a render asks again, gets nothing within the short
    // wait, and renders on the CPU, saying so.
    let chunks = lip_sync_stream(&mut tts, face_request(audio(), face.clone()))
        .await
        .expect("a fallback render");
    let render = chunks[0].render.clone().unwrap();
    assert!(!render.leased);
    assert!(render.note.contains("no GPU memory"), "{}", render.note);
    assert_eq!(chunks.iter().filter(|c| c.frame.is_some()).count(), 30);
    let status = lip_sync_status(&tts).await.expect("GetLipSyncStatus");
    assert!(status.lease_timeouts >= 1, "{status:?}");
    assert!(status.fallback_windows >= 2, "{status:?}");
    // No room within the wait is not a failure: the next render may ask at once.
    assert_eq!((status.failures, status.retry_in), (0, None), "{status:?}");
    assert!(status.note.contains("no GPU memory"), "{status:?}");
    assert!(find(&leases(&client).await, "arbiter-tts/lipsync").is_none());

    // The waiter finishes; the next render brings the model back under a new lease.
    drop(waiter);
    eventually(SOON, "the waiter's lease to end", || async {
        let leases = leases(&client).await;
        (!leases.iter().any(|l| l.holder == "a big video job")).then_some(())
    })
    .await;
    let chunks = lip_sync_stream(&mut tts, face_request(audio(), face))
        .await
        .expect("a render that brings the model back");
    let render = chunks[0].render.clone().unwrap();
    assert!(render.leased, "back under a lease: {render:?}");
    let now = leases(&client).await;
    let again = find(&now, "arbiter-tts/lipsync").expect("a new lip-sync lease");
    assert_ne!(again.lease_id, lipsync.lease_id);
    assert_eq!((again.bytes, again.preemptible), (GIB, true));
    let status = lip_sync_status(&tts).await.expect("GetLipSyncStatus");
    assert_eq!(status.residency, pb::LipSyncResidency::Resident as i32);
    assert_eq!(status.lease_id, again.lease_id);
    assert_eq!(status.leases_granted, 2);
}

/// A lip-sync lease that cannot be asked for (the supervisor unreachable) is a failure: the
/// render goes to the CPU saying why, and later renders do not ask again until the backoff
/// has passed, instead of one failed ask (or GPU load) per render.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ask_holds_the_next_one_back() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let nobody = dir.path().join("no-supervisor.sock");
    let (_tts, tts_socket) = tts::serve_with_lipsync(dir.path(), &nobody, &[]);
    let tts = connected(&tts_socket).await;
    let client = tts.clone();
    let status = || async { lip_sync_status(&client).await.expect("GetLipSyncStatus") };

    // The first render asks, fails, and renders on the CPU saying why.
    let face = picture(64, 64, image::ImageFormat::Png);
    let render = || async {
        let chunks = lip_sync_stream(
            &mut tts.clone(),
            face_request(Input::Audio(pcm(&tone(0.5, 16000), 16000)), face.clone()),
        )
        .await
        .expect("a render on the CPU");
        chunks[0].render.clone().unwrap()
    };
    let first = render().await;
    assert!(!first.leased, "{first:?}");
    let failed = eventually(SOON, "the first ask to fail", || async {
        let status = status().await;
        (status.failures == 1).then_some(status)
    })
    .await;
    assert_eq!(failed.residency, pb::LipSyncResidency::Offloaded as i32);
    assert!(
        failed.note.contains("cannot reach the supervisor"),
        "{failed:?}"
    );
    assert!(failed.note.contains("asking again in 5 s"), "{failed:?}");
    let wait = secs(&failed.retry_in);
    assert!(wait > 0.0 && wait <= 5.0, "{failed:?}");

    // Renders meanwhile go to the CPU, saying why, without asking again.
    for _ in 0..3 {
        let render = render().await;
        assert!(!render.leased, "{render:?}");
        assert!(
            render.note.contains("cannot reach the supervisor"),
            "{render:?}"
        );
    }
    let after = status().await;
    assert_eq!(
        after.failures, 1,
        "no new ask within the backoff: {after:?}"
    );
    assert_eq!(after.leases_granted, 0);
}
