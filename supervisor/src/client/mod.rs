//! The operator's commands, spoken over the same gRPC API any client uses: `status`,
//! `leases`, `events` and `hold` here (like `nvidia-smi` for what Arbiter lends out), and
//! the video jobs' `generate`, `jobs` and `cancel` in [`jobs`]; `plot` in [`plot`] draws
//! GPU memory over time from NVML samples (no supervisor needed); `run` in [`run`] runs a
//! command under a lease for its lifetime.

use std::time::{Duration, SystemTime};

use arbiter::ByteSize;
use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as pb;
use pb::supervisor_client::SupervisorClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::cli::{ClientArgs, HoldArgs, ReloadArgs, ReloadFrom};
use crate::config::Config;

pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

pub mod jobs;
pub mod plot;
pub mod record;
pub mod run;
pub mod token;

/// The supervisor named by `--address`, else the configured socket.
fn address(args: &ClientArgs, config: &Config) -> Address {
    match &args.address {
        Some(text) => Address::parse(text),
        None => Address::unix(&config.server.socket),
    }
}

/// A channel to the supervisor named by `--address`, else the configured socket.
async fn channel(args: &ClientArgs, config: &Config) -> Result<Channel, ClientError> {
    Ok(connect(&address(args, config)).await?)
}

/// A priority class by the name `--priority` takes.
fn priority_by_name(text: &str) -> Result<pb::Priority, UnknownPriority> {
    match text.to_ascii_lowercase().as_str() {
        "batch" => Ok(pb::Priority::Batch),
        "normal" => Ok(pb::Priority::Normal),
        "interactive" => Ok(pb::Priority::Interactive),
        "critical" => Ok(pb::Priority::Critical),
        _ => Err(UnknownPriority(text.to_string())),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown priority `{0}`: use batch, normal, interactive or critical")]
pub struct UnknownPriority(String);

async fn client(
    args: &ClientArgs,
    config: &Config,
) -> Result<SupervisorClient<Channel>, ClientError> {
    Ok(SupervisorClient::new(channel(args, config).await?))
}

fn status_error(status: tonic::Status) -> ClientError {
    format!("{:?}: {}", status.code(), status.message()).into()
}

pub async fn status(args: &ClientArgs, config: &Config) -> Result<(), ClientError> {
    let mut client = client(args, config).await?;
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let leases = list_leases(&mut client).await?;
    println!(
        "arbiter-supervisor {}{}, up {}; you are {}{}",
        status.version,
        if status.simulated {
            " (simulated GPUs)"
        } else {
            ""
        },
        status.uptime.map(|d| human(d, true)).unwrap_or_default(),
        status.caller,
        if status.operator { " (operator)" } else { "" }
    );
    for warning in &status.warnings {
        println!("WARNING: {warning}");
    }
    println!();
    println!(
        "{:<4} {:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "GPU", "NAME", "TOTAL", "USED", "UNLEASED", "BUDGET", "GRANTED", "AVAILABLE"
    );
    for gpu in &status.gpus {
        println!(
            "{:<4} {:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            gpu.index,
            truncate(&gpu.name, 28),
            ByteSize(gpu.total_bytes).to_string(),
            ByteSize(gpu.used_bytes).to_string(),
            ByteSize(gpu.unleased_bytes).to_string(),
            ByteSize(gpu.budget_bytes).to_string(),
            ByteSize(gpu.granted_bytes).to_string(),
            ByteSize(gpu.available_bytes).to_string()
        );
        let mut held_out = Vec::new();
        if gpu.excess_bytes > 0 {
            held_out.push(format!("{} used above leases", ByteSize(gpu.excess_bytes)));
        }
        if gpu.returning_bytes > 0 {
            held_out.push(format!(
                "{} given back, not yet seen free{}",
                ByteSize(gpu.returning_bytes),
                if gpu.unverified_bytes > 0 {
                    format!(
                        " ({} unverified past the timeout)",
                        ByteSize(gpu.unverified_bytes)
                    )
                } else {
                    String::new()
                }
            ));
        }
        if !held_out.is_empty() {
            println!("     also out of the budget: {}", held_out.join("; "));
        }
        if gpu.unmeasured_bytes > 0 {
            println!(
                "     {} granted to holders the supervisor cannot see (TCP): counted by bytes alone",
                ByteSize(gpu.unmeasured_bytes)
            );
        }
        for process in &gpu.processes {
            let owner = if process.lease_id.is_empty() {
                "no lease (foreign)"
            } else {
                &process.lease_id
            };
            println!(
                "     pid {:<8} {:>10}  {}",
                process.pid,
                ByteSize(process.used_bytes).to_string(),
                owner
            );
        }
    }
    println!();
    print_leases(&leases);
    if !status.returns.is_empty() {
        println!();
        println!(
            "{:<38} {:<24} {:>8} {:>10} {:<12} {:>8}",
            "GIVEN BACK (NOT YET FREE)", "HOLDER", "PID", "BYTES", "HOW", "WAITED"
        );
        for r in &status.returns {
            println!(
                "{:<38} {:<24} {:>8} {:>10} {:<12} {:>8}{}",
                r.lease_id,
                truncate(&r.holder, 24),
                r.pid,
                ByteSize(r.bytes).to_string(),
                r.reason,
                r.waited.map(|d| human(d, false)).unwrap_or_default(),
                if r.overdue { "  unverified" } else { "" }
            );
        }
    }
    if !status.queue.is_empty() {
        println!();
        println!(
            "{:<4} {:<24} {:>10} {:<12} {:>8}",
            "POS", "WAITING", "BYTES", "PRIORITY", "WAITED"
        );
        for w in &status.queue {
            println!(
                "{:<4} {:<24} {:>10} {:<12} {:>8}",
                w.position,
                truncate(&w.holder, 24),
                ByteSize(w.bytes).to_string(),
                priority_name(w.priority),
                w.waited.map(|d| human(d, false)).unwrap_or_default()
            );
        }
    }
    if let Some(pool) = &status.weight_pool {
        println!();
        print_pool(pool);
    }
    Ok(())
}

/// The host weight pool's line: what it holds against its budget, and how it has served.
fn print_pool(pool: &pb::WeightPool) {
    println!(
        "weight pool {}: {} of {} in {} files ({} on 2 MiB pages, {} locked); {} hits, {} fills ({} in {:.1} s), {} evictions, {} refusals",
        pool.socket,
        ByteSize(pool.bytes),
        ByteSize(pool.budget_bytes),
        pool.files,
        pool.huge_page_files,
        pool.locked_files,
        pool.hits,
        pool.fills,
        ByteSize(pool.fill_bytes),
        pool.fill_seconds,
        pool.evictions,
        pool.refusals
    );
}

/// Releases a lease by id: its owner's, or any for an operator (a unary lease whose
/// holder is gone, say).
pub async fn release(args: &ClientArgs, config: &Config, id: &str) -> Result<(), ClientError> {
    let mut client = client(args, config).await?;
    let reply = client
        .release(pb::ReleaseRequest {
            lease_id: id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "released {id}: {} given back",
        ByteSize(reply.bytes_returned)
    );
    Ok(())
}

pub async fn leases(args: &ClientArgs, config: &Config) -> Result<(), ClientError> {
    let mut client = client(args, config).await?;
    print_leases(&list_leases(&mut client).await?);
    Ok(())
}

async fn list_leases(
    client: &mut SupervisorClient<Channel>,
) -> Result<Vec<pb::Lease>, ClientError> {
    Ok(client
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .leases)
}

fn print_leases(leases: &[pb::Lease]) {
    if leases.is_empty() {
        println!("no leases");
        return;
    }
    println!(
        "{:<38} {:<24} {:>3} {:>10} {:>10} {:<12} {:<6} {:>8}",
        "LEASE", "HOLDER", "GPU", "BYTES", "USED", "PRIORITY", "FORM", "PID"
    );
    for lease in leases {
        println!(
            "{:<38} {:<24} {:>3} {:>10} {:>10} {:<12} {:<6} {:>8}{}",
            lease.lease_id,
            truncate(&lease.holder, 24),
            lease.gpu_index,
            ByteSize(lease.bytes).to_string(),
            lease
                .used_bytes
                .map(|b| ByteSize(b).to_string())
                .unwrap_or_else(|| "-".into()),
            priority_name(lease.priority),
            if lease.form == pb::LeaseForm::Unary as i32 {
                "unary"
            } else {
                "stream"
            },
            lease
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            [
                if lease.preemptible {
                    format!("  preemptible ({})", reload_shown(lease.reload.as_ref()))
                } else {
                    String::new()
                },
                match &lease.reclaim {
                    Some(r) => format!("  reclaiming {}", ByteSize(r.bytes)),
                    None => String::new(),
                },
                match lease.excess_bytes {
                    Some(excess) if excess > 0 => format!("  {} over its lease", ByteSize(excess)),
                    _ => String::new(),
                },
                if lease.measured {
                    String::new()
                } else {
                    "  (counted by bytes: process not visible)".into()
                },
            ]
            .concat()
        );
    }
}

pub async fn events(
    args: &ClientArgs,
    config: &Config,
    samples: bool,
    record: Option<&std::path::Path>,
) -> Result<(), ClientError> {
    let mut client = client(args, config).await?;
    let mut recorder = match record {
        Some(path) => {
            let leases = client
                .list_leases(pb::ListLeasesRequest::default())
                .await
                .map_err(status_error)?
                .into_inner()
                .leases;
            let file =
                record::open(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Some(record::Recorder::new(file, &leases)?)
        }
        None => None,
    };
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {
            include_samples: samples || recorder.is_some(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(event) = stream.next().await {
        let event = event.map_err(status_error)?;
        if let Some(recorder) = recorder.as_mut() {
            recorder.event(&event)?;
            if matches!(event.kind, Some(pb::event::Kind::Sample(_))) && !samples {
                continue;
            }
        }
        println!("{}", describe(&event));
    }
    Ok(())
}

/// One line per event, for people.
pub fn describe(event: &pb::Event) -> String {
    use pb::event::Kind;
    let at = event
        .at
        .and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_micros(t).to_string())
        .unwrap_or_default();
    let what = match &event.kind {
        Some(Kind::Granted(l)) => format!(
            "granted  {} {} on GPU {} to {}",
            l.lease_id,
            ByteSize(l.bytes),
            l.gpu_index,
            l.holder
        ),
        Some(Kind::Released(r)) => format!(
            "released {} {} from {} ({}){}",
            r.lease_id,
            ByteSize(r.bytes),
            r.holder,
            r.reason,
            returning(r.returning_bytes)
        ),
        Some(Kind::Returned(r)) => format!(
            "returned {} {} from {}: seen free after {:.2} ms{}",
            r.lease_id,
            ByteSize(r.bytes),
            r.holder,
            r.took
                .and_then(|d| Duration::try_from(d).ok())
                .map_or(0.0, |d| d.as_secs_f64() * 1e3),
            if r.overdue { " (late)" } else { "" }
        ),
        Some(Kind::ReturnOverdue(r)) => format!(
            "unverified {} {} from {} (pid {}): still in use ({} on {} held) past the timeout; kept out of the budget",
            r.lease_id,
            ByteSize(r.bytes),
            r.holder,
            r.pid,
            ByteSize(r.used_bytes),
            ByteSize(r.holds_bytes)
        ),
        Some(Kind::Reclaim(r)) => format!(
            "reclaim  {} give back {}: {}",
            r.lease_id,
            ByteSize(r.bytes),
            r.reason
        ),
        Some(Kind::Revoked(r)) => format!(
            "revoked  {} {}: {}{}",
            r.lease_id,
            ByteSize(r.bytes),
            r.reason,
            returning(r.returning_bytes)
        ),
        Some(Kind::ReclaimWithdrawn(r)) => {
            format!("withdrawn reclaim of {} from {}", r.lease_id, r.holder)
        }
        Some(Kind::WaitStarted(w)) => format!(
            "queued   {} for {} at position {}",
            w.holder,
            ByteSize(w.bytes),
            w.position
        ),
        Some(Kind::WaitEnded(w)) => format!(
            "waited   {} {} ({})",
            w.holder,
            w.waited.map(|d| human(d, false)).unwrap_or_default(),
            w.reason
        ),
        Some(Kind::Sample(g)) => format!(
            "sample   GPU {} used {} unleased {} granted {} available {}",
            g.index,
            ByteSize(g.used_bytes),
            ByteSize(g.unleased_bytes),
            ByteSize(g.granted_bytes),
            ByteSize(g.available_bytes)
        ),
        Some(Kind::Overuse(o)) => format!(
            "overuse  {} {} uses {} on a lease of {} (action: {})",
            o.lease_id,
            o.holder,
            ByteSize(o.used_bytes),
            ByteSize(o.lease_bytes),
            o.action
        ),
        None => "unknown event".into(),
    };
    format!("{at} {what}")
}

fn returning(bytes: u64) -> String {
    if bytes == 0 {
        String::new()
    } else {
        format!(", {} out of the budget until seen free", ByteSize(bytes))
    }
}

/// Holds a streaming lease until SIGINT/SIGTERM, answering reclaim requests by shrinking.
pub async fn hold(args: &HoldArgs, config: &Config) -> Result<(), ClientError> {
    let mut client = client(&args.client, config).await?;
    let priority = priority_by_name(&args.priority)?;
    let request = pb::LeaseRequest {
        holder: args.holder.clone(),
        gpu: args.gpu.clone(),
        bytes: args.bytes.0,
        priority: priority as i32,
        max_wait: args
            .max_wait
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        preemptible: args.preemptible,
        ttl: None,
        reload: reload_request(&args.reload),
    };
    let mut stream = client
        .hold(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut held = 0u64;
    let stop = arbiter::listen::signals();
    tokio::pin!(stop);
    loop {
        let update = tokio::select! {
            () = &mut stop => return Ok(()),
            update = stream.next() => update,
        };
        let Some(update) = update else {
            return Err("the supervisor ended the lease stream".into());
        };
        let update = update.map_err(status_error)?;
        use pb::lease_update::Update;
        match update.update {
            Some(Update::Queued(q)) => {
                println!("queued at position {} of {}", q.position, q.queue_length)
            }
            Some(Update::Granted(l)) => {
                held = l.bytes;
                println!(
                    "granted {} {} on GPU {} ({})",
                    l.lease_id,
                    ByteSize(l.bytes),
                    l.gpu_index,
                    l.gpu_uuid
                );
            }
            Some(Update::Reclaim(r)) => {
                println!(
                    "reclaim requested: give back {} ({})",
                    ByteSize(r.bytes),
                    r.reason
                );
                if args.ignore_reclaim {
                    continue;
                }
                if r.bytes >= held {
                    client
                        .release(pb::ReleaseRequest {
                            lease_id: r.lease_id.clone(),
                        })
                        .await
                        .map_err(status_error)?;
                    println!("released {} to make room", r.lease_id);
                    return Ok(());
                }
                let lease = client
                    .shrink(pb::ShrinkRequest {
                        lease_id: r.lease_id.clone(),
                        bytes: held - r.bytes,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                held = lease.bytes;
                println!("shrunk {} to {}", lease.lease_id, ByteSize(lease.bytes));
            }
            Some(Update::Revoked(r)) => {
                return Err(format!("lease {} revoked: {}", r.lease_id, r.reason).into());
            }
            None => {}
        }
    }
}

/// `--reload` and `--reload-rate` as the wire's ReloadCost; None when neither is given.
fn reload_request(args: &ReloadArgs) -> Option<pb::ReloadCost> {
    if args.reload.is_none() && args.reload_rate.is_none() {
        return None;
    }
    let source = match args.reload {
        None => pb::ReloadSource::Unspecified,
        Some(ReloadFrom::HostPool) => pb::ReloadSource::HostPool,
        Some(ReloadFrom::PageCache) => pb::ReloadSource::PageCache,
        Some(ReloadFrom::Disk) => pb::ReloadSource::Disk,
        Some(ReloadFrom::Recompute) => pb::ReloadSource::Recompute,
    };
    Some(pb::ReloadCost {
        source: source as i32,
        bytes_per_second: args.reload_rate.map(|r| r.0),
    })
}

/// A preemptible lease's reload as `leases` shows it: "reload: host pool, 24.0 GB/s
/// measured", or "reload: not said" for a holder that said nothing (asked last in its
/// class).
fn reload_shown(reload: Option<&pb::ReloadCost>) -> String {
    let source = match reload.map(|r| pb::ReloadSource::try_from(r.source)) {
        Some(Ok(pb::ReloadSource::HostPool)) => "host pool",
        Some(Ok(pb::ReloadSource::PageCache)) => "page cache",
        Some(Ok(pb::ReloadSource::Disk)) => "disk",
        Some(Ok(pb::ReloadSource::Recompute)) => "recompute",
        _ => "not said",
    };
    match reload.and_then(|r| r.bytes_per_second) {
        Some(rate) => format!("reload: {source}, {} measured", rate_shown(rate)),
        None => format!("reload: {source}"),
    }
}

/// Bytes per second in the decimal units links are rated in.
fn rate_shown(bytes_per_second: u64) -> String {
    let rate = bytes_per_second as f64;
    if rate >= 1e9 {
        format!("{:.1} GB/s", rate / 1e9)
    } else {
        format!("{:.0} MB/s", rate / 1e6)
    }
}

fn priority_name(value: i32) -> &'static str {
    match pb::Priority::try_from(value) {
        Ok(pb::Priority::Batch) => "batch",
        Ok(pb::Priority::Interactive) => "interactive",
        Ok(pb::Priority::Critical) => "critical",
        _ => "normal",
    }
}

pub(crate) fn human(d: prost_types::Duration, seconds_only: bool) -> String {
    let d = Duration::try_from(d).unwrap_or_default();
    let d = if seconds_only {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    };
    humantime::format_duration(d).to_string()
}

/// `text` cut to `width` characters, with an ellipsis where it was cut.
pub(crate) fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(width - 1).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_shows_where_its_bytes_reload_from_and_silence_as_not_said() {
        let pooled = pb::ReloadCost {
            source: pb::ReloadSource::HostPool as i32,
            bytes_per_second: Some(24_000_000_000),
        };
        assert_eq!(
            reload_shown(Some(&pooled)),
            "reload: host pool, 24.0 GB/s measured"
        );
        let disk = pb::ReloadCost {
            source: pb::ReloadSource::Disk as i32,
            bytes_per_second: Some(900_000_000),
        };
        assert_eq!(reload_shown(Some(&disk)), "reload: disk, 900 MB/s measured");
        assert_eq!(reload_shown(None), "reload: not said");
    }

    #[test]
    fn the_reload_flags_become_the_wire_s_reload_cost() {
        let none = ReloadArgs {
            reload: None,
            reload_rate: None,
        };
        assert_eq!(reload_request(&none), None);
        let cache = ReloadArgs {
            reload: Some(ReloadFrom::PageCache),
            reload_rate: Some(ByteSize(40_000_000_000)),
        };
        assert_eq!(
            reload_request(&cache),
            Some(pb::ReloadCost {
                source: pb::ReloadSource::PageCache as i32,
                bytes_per_second: Some(40_000_000_000),
            })
        );
    }
}
