//! Which GPU the service runs on, settled before CUDA starts in the process.
//!
//! CUDA reads `CUDA_VISIBLE_DEVICES` once, when the process first touches it, and libtorch's
//! device 0 is from then on the first card listed there. So the service picks its card
//! before it loads anything, pins itself to it by setting `CUDA_VISIBLE_DEVICES` to the
//! card's uuid (unless the environment set it already), and asks its leases (the voices'
//! and the lip-sync model's) for that same card. Every model then runs on `Device::Cuda(0)`,
//! which is the card of the lease.
//!
//! Start-up loads first and leases after (a lease without `--lease-bytes` is sized from what
//! the loads reserved), so the card cannot wait for the lease's grant. It comes from, in
//! this order ([`plan`]):
//!
//! 1. `CUDA_VISIBLE_DEVICES` set by the environment (a container, a Kubernetes claim, a
//!    supervisor that spawned the service): respected as it is; its first entry is the card,
//!    and the leases ask for that entry. A `--gpu` naming another card is refused.
//! 2. `--gpu GPU-…`: that card.
//! 3. `--gpu N`: the card the supervisor numbers N (NVML's and nvidia-smi's index), whose
//!    uuid its `GetStatus` names. When the supervisor cannot be asked: N itself, in PCI bus
//!    order (`CUDA_DEVICE_ORDER=PCI_BUS_ID`, the order NVML numbers in).
//! 4. No `--gpu` (any) with models to load on a GPU (TorchScript voices, a lip-sync model):
//!    the card the supervisor's ledger would place the lease on, read from `GetStatus`: the
//!    best fit (the least available memory that still fits `--lease-bytes`, or, when none
//!    fits, the card the lease would wait for) when the size is given; the card with the most
//!    available memory when the size will be measured. When the supervisor cannot be asked:
//!    NVML's card 0, as before `--gpu` existed.
//! 5. No `--gpu` and nothing to load on a GPU (eSpeak NG voices only): nothing is pinned,
//!    and a lease (`--lease-bytes`) goes wherever the supervisor grants it.
//!
//! Under `--lease-from-env` ([`Claim`]) the card is the claim's: the first entry of
//! `CUDA_VISIBLE_DEVICES`, which the claim's CDI device sets, so 1 always applies.
//!
//! [`CardState`] is what the service reports (`ListVoices`' `gpu`, the logs): the planned
//! card, completed by the lease's grant (the supervisor's uuid and index).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1 as pb;

pub use arbiter::leased::{CLAIM_UID, LEASE_BYTES, LEASE_ID, VISIBLE_DEVICES};
/// The environment variable that orders CUDA's device indices.
pub const DEVICE_ORDER: &str = "CUDA_DEVICE_ORDER";

/// How long start-up waits for the supervisor's `GetStatus` before it picks without it.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// The `--gpu` flag: a card by index or uuid, or any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuChoice {
    #[default]
    Any,
    /// An index as the supervisor (NVML, nvidia-smi) numbers its cards.
    Index(u32),
    /// A uuid, `GPU-…` (or `MIG-…`).
    Uuid(String),
}

/// A `--gpu` value that names no card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a GPU: give an index (0), a uuid (GPU-…), or any")]
pub struct GpuChoiceError(String);

impl FromStr for GpuChoice {
    type Err = GpuChoiceError;

    fn from_str(text: &str) -> Result<GpuChoice, GpuChoiceError> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("any") {
            Ok(GpuChoice::Any)
        } else if let Ok(index) = text.parse::<u32>() {
            Ok(GpuChoice::Index(index))
        } else if text.starts_with("GPU-") || text.starts_with("MIG-") {
            Ok(GpuChoice::Uuid(text.to_string()))
        } else {
            Err(GpuChoiceError(text.to_string()))
        }
    }
}

impl fmt::Display for GpuChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuChoice::Any => f.write_str("any"),
            GpuChoice::Index(index) => write!(f, "{index}"),
            GpuChoice::Uuid(uuid) => f.write_str(uuid),
        }
    }
}

impl GpuChoice {
    /// Whether `entry` (of `CUDA_VISIBLE_DEVICES`) names this card, as far as a string can
    /// tell: any matches everything, an index or uuid only itself.
    fn names(&self, entry: &str) -> bool {
        match self {
            GpuChoice::Any => true,
            GpuChoice::Index(index) => entry.parse::<u32>() == Ok(*index),
            GpuChoice::Uuid(uuid) => entry == uuid,
        }
    }

    /// The lease request's `gpu`: "" for any.
    fn request(&self) -> String {
        match self {
            GpuChoice::Any => String::new(),
            other => other.to_string(),
        }
    }
}

/// How the card was picked, as `ServiceGpu.chosen_by` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChosenBy {
    /// `CUDA_VISIBLE_DEVICES` came with the environment.
    Environment,
    /// `--gpu`.
    Flag,
    /// The supervisor's status, best fit for `--lease-bytes`.
    BestFit,
    /// The supervisor's status, the most available memory (the size is measured later).
    MostAvailable,
    /// NVML's card 0: the supervisor could not be asked.
    Default,
    /// Nothing pinned: wherever the supervisor granted the lease.
    Lease,
    /// `--lease-from-env`: the claim's card.
    Claim,
}

impl ChosenBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ChosenBy::Environment => "environment",
            ChosenBy::Flag => "flag",
            ChosenBy::BestFit => "best-fit",
            ChosenBy::MostAvailable => "most-available",
            ChosenBy::Default => "default",
            ChosenBy::Lease => "lease",
            ChosenBy::Claim => "claim",
        }
    }
}

/// A card as the service knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    /// `GPU-…` (or `MIG-…`); empty while only an index is known.
    pub uuid: String,
    /// The supervisor's (NVML's) index, where known.
    pub index: Option<u32>,
    pub chosen_by: ChosenBy,
}

/// What [`plan`] decides from.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub choice: &'a GpuChoice,
    /// `CUDA_VISIBLE_DEVICES` as the process received it.
    pub visible: Option<&'a str>,
    /// Whether `CUDA_DEVICE_ORDER` came with the environment (then it is left alone).
    pub device_order_set: bool,
    /// Models will be loaded on a GPU when libtorch sees one (TorchScript voices, a
    /// lip-sync model).
    pub gpu_work: bool,
    /// The voices' lease, when its size is given (`--lease-bytes`).
    pub lease_bytes: Option<u64>,
    /// The supervisor's GPUs, when it was asked and answered.
    pub gpus: Option<&'a [spb::GpuStatus]>,
}

/// The card, decided before CUDA starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Variables to set in this process before CUDA starts, in order.
    pub set_env: Vec<(&'static str, String)>,
    /// What the leases ask the supervisor for: a uuid, an index, or "" (any).
    pub lease_gpu: String,
    /// The card, when one is pinned (None: wherever the lease is granted).
    pub card: Option<Card>,
}

/// Why no card could be settled: the operator's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error(
        "CUDA_VISIBLE_DEVICES={visible} is set by the environment, and --gpu {choice} names another card: \
         the service runs on the first card CUDA_VISIBLE_DEVICES lists; drop --gpu, or unset CUDA_VISIBLE_DEVICES"
    )]
    Conflict { visible: String, choice: String },
    #[error("--gpu {index}: the supervisor has no GPU {index} (it has {count}: {indices})")]
    NoSuchGpu {
        index: u32,
        count: usize,
        indices: String,
    },
}

/// Whether [`plan`] needs the supervisor's GPUs: to turn `--gpu N` or any into a uuid
/// before models load on a GPU, when the environment has not named the card.
pub fn needs_status(choice: &GpuChoice, visible: Option<&str>, gpu_work: bool) -> bool {
    visible.is_none() && gpu_work && !matches!(choice, GpuChoice::Uuid(_))
}

/// Settles the card (see the module docs for the order). Pure: the caller asks the
/// supervisor ([`supervisor_gpus`]) and sets the variables.
pub fn plan(inputs: Inputs<'_>) -> Result<Plan, CardError> {
    let choice = inputs.choice;
    if let Some(visible) = inputs.visible {
        let first = visible.split(',').next().unwrap_or_default().trim();
        if first.is_empty() {
            // No card visible: the models run on the CPU, and a lease is accounting only.
            return Ok(Plan {
                set_env: Vec::new(),
                lease_gpu: choice.request(),
                card: None,
            });
        }
        if !choice.names(first) {
            return Err(CardError::Conflict {
                visible: visible.to_string(),
                choice: choice.to_string(),
            });
        }
        let index = first.parse::<u32>().ok();
        return Ok(Plan {
            set_env: Vec::new(),
            lease_gpu: lease_entry(first),
            card: Some(Card {
                uuid: if index.is_some() {
                    String::new()
                } else {
                    first.to_string()
                },
                index,
                chosen_by: ChosenBy::Environment,
            }),
        });
    }
    let pin = |uuid: &str| vec![(VISIBLE_DEVICES, uuid.to_string())];
    // NVML numbers cards in PCI bus order; CUDA, unless told, fastest first.
    let by_index = |index: u32| {
        let mut set = Vec::new();
        if !inputs.device_order_set {
            set.push((DEVICE_ORDER, "PCI_BUS_ID".to_string()));
        }
        set.push((VISIBLE_DEVICES, index.to_string()));
        set
    };
    match choice {
        GpuChoice::Uuid(uuid) => Ok(Plan {
            set_env: pin(uuid),
            lease_gpu: uuid.clone(),
            card: Some(Card {
                uuid: uuid.clone(),
                index: inputs
                    .gpus
                    .and_then(|gpus| gpus.iter().find(|g| &g.uuid == uuid))
                    .map(|g| g.index),
                chosen_by: ChosenBy::Flag,
            }),
        }),
        GpuChoice::Index(index) if !inputs.gpu_work => Ok(Plan {
            set_env: Vec::new(),
            lease_gpu: index.to_string(),
            card: Some(Card {
                uuid: String::new(),
                index: Some(*index),
                chosen_by: ChosenBy::Flag,
            }),
        }),
        GpuChoice::Index(index) => match inputs.gpus {
            Some(gpus) => {
                let gpu = gpus.iter().find(|g| g.index == *index).ok_or_else(|| {
                    CardError::NoSuchGpu {
                        index: *index,
                        count: gpus.len(),
                        indices: gpus
                            .iter()
                            .map(|g| g.index.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?;
                Ok(Plan {
                    set_env: pin(&gpu.uuid),
                    lease_gpu: gpu.uuid.clone(),
                    card: Some(Card {
                        uuid: gpu.uuid.clone(),
                        index: Some(gpu.index),
                        chosen_by: ChosenBy::Flag,
                    }),
                })
            }
            None => Ok(Plan {
                set_env: by_index(*index),
                lease_gpu: index.to_string(),
                card: Some(Card {
                    uuid: String::new(),
                    index: Some(*index),
                    chosen_by: ChosenBy::Flag,
                }),
            }),
        },
        GpuChoice::Any if !inputs.gpu_work => Ok(Plan {
            set_env: Vec::new(),
            lease_gpu: String::new(),
            card: None,
        }),
        GpuChoice::Any => match inputs.gpus.and_then(|gpus| pick(gpus, inputs.lease_bytes)) {
            Some((gpu, chosen_by)) => Ok(Plan {
                set_env: pin(&gpu.uuid),
                lease_gpu: gpu.uuid.clone(),
                card: Some(Card {
                    uuid: gpu.uuid.clone(),
                    index: Some(gpu.index),
                    chosen_by,
                }),
            }),
            None => Ok(Plan {
                set_env: by_index(0),
                lease_gpu: "0".into(),
                card: Some(Card {
                    uuid: String::new(),
                    index: Some(0),
                    chosen_by: ChosenBy::Default,
                }),
            }),
        },
    }
}

/// The card the supervisor's ledger would place a lease of `bytes` on: among the cards
/// where it fits, the one with the least available memory (best fit, which keeps large
/// cards free for large leases); where it fits nowhere, the card it would wait for (the
/// largest budget, then the most available). Unknown size: the most available memory.
/// Ties go to the lower index. None when there are no cards.
pub fn pick(gpus: &[spb::GpuStatus], bytes: Option<u64>) -> Option<(&spb::GpuStatus, ChosenBy)> {
    let lowest_first = |g: &spb::GpuStatus| std::cmp::Reverse(g.index);
    match bytes {
        Some(bytes) => gpus
            .iter()
            .filter(|g| g.available_bytes >= bytes)
            .min_by_key(|g| (g.available_bytes, g.index))
            .or_else(|| {
                gpus.iter()
                    .max_by_key(|g| (g.budget_bytes, g.available_bytes, lowest_first(g)))
            })
            .map(|g| (g, ChosenBy::BestFit)),
        None => gpus
            .iter()
            .max_by_key(|g| (g.available_bytes, lowest_first(g)))
            .map(|g| (g, ChosenBy::MostAvailable)),
    }
}

/// What a lease asks for, for an entry of `CUDA_VISIBLE_DEVICES`: a uuid or an index as
/// it is (the supervisor takes both); an entry it cannot name (a MIG instance) asks for any.
fn lease_entry(entry: &str) -> String {
    if entry.starts_with("GPU-") || entry.parse::<u32>().is_ok() {
        entry.to_string()
    } else {
        String::new()
    }
}

/// The supervisor's GPUs, asked before CUDA starts: on a runtime of its own, which is gone
/// (its threads joined) when this returns, so that the caller may then set the process's
/// environment with no other thread running.
pub fn supervisor_gpus(supervisor: &Address) -> Result<Vec<spb::GpuStatus>, String> {
    supervisor_status(supervisor).map(|status| status.gpus)
}

/// The supervisor's whole status, asked the same way (before the service's runtime).
pub fn supervisor_status(supervisor: &Address) -> Result<spb::SupervisorStatus, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let answer = runtime.block_on(async {
        let ask = async {
            let channel = connect(supervisor).await.map_err(|e| e.to_string())?;
            spb::supervisor_client::SupervisorClient::new(channel)
                .get_status(spb::GetStatusRequest {})
                .await
                .map(|reply| reply.into_inner())
                .map_err(|s| format!("GetStatus: {:?}: {}", s.code(), s.message()))
        };
        tokio::time::timeout(STATUS_TIMEOUT, ask)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {STATUS_TIMEOUT:?}")))
    });
    drop(runtime);
    answer
}

/// The lease someone else holds for this process (`--lease-from-env`): a pod under a
/// Kubernetes DRA claim, whose driver took the lease on the node's supervisor and put it in
/// the container's environment (`ARBITER_LEASE_BYTES`, `ARBITER_LEASE_ID`,
/// `CUDA_VISIBLE_DEVICES`). The service asks for no lease of its own: the voices and the
/// lip-sync model share this budget, checked at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The claim's lease on its first card: the service's whole budget.
    pub bytes: u64,
    /// The lease id of the claim's first card (empty when `ARBITER_LEASE_ID` is unset).
    pub lease_id: String,
    /// `ARBITER_LEASE_ID` as given (one id per card of the claim).
    pub lease_ids: String,
    /// The card: the first entry of `CUDA_VISIBLE_DEVICES`.
    pub gpu: String,
    /// `ARBITER_CLAIM_UID`, when set.
    pub claim_uid: Option<String>,
}

/// Why `--lease-from-env` cannot run, or why the models do not fit its claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "--lease-from-env: ARBITER_LEASE_BYTES is not set: it is the claim's lease in bytes, which \
         the claim's CDI device sets in the container (or run without --lease-from-env, under a \
         lease of the service's own from the supervisor)"
    )]
    MissingBytes,
    #[error(
        "--lease-from-env: ARBITER_LEASE_BYTES=`{value}` is not a byte count ({reason}): give the \
         claim's lease in bytes, such as 4294967296"
    )]
    BadBytes { value: String, reason: String },
    #[error("--lease-from-env: ARBITER_LEASE_BYTES is 0: the claim lends nothing to run on")]
    ZeroBytes,
    #[error(
        "--lease-from-env: CUDA_VISIBLE_DEVICES is {0}: the claim's card is named there (the \
         claim's CDI device sets it); without it the service cannot tell which card its budget is on"
    )]
    NoCard(&'static str),
    #[error(
        "--lease-from-env: the voices ({voices}) and the lip-sync model ({lip_sync}) need {total}, \
         more than the claim's ARBITER_LEASE_BYTES ({budget}): ask for a larger claim, or give \
         smaller --lease-bytes / --lipsync-lease-bytes"
    )]
    DoesNotFit {
        voices: arbiter::ByteSize,
        lip_sync: arbiter::ByteSize,
        total: arbiter::ByteSize,
        budget: arbiter::ByteSize,
    },
}

impl Claim {
    /// Reads the claim from the environment (`get` looks a variable up: `std::env::var`
    /// in the service, a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Claim, ClaimError> {
        let value = get(LEASE_BYTES).ok_or(ClaimError::MissingBytes)?;
        let bytes = value
            .parse::<arbiter::ByteSize>()
            .map_err(|e| ClaimError::BadBytes {
                value: value.clone(),
                reason: e.to_string(),
            })?
            .0;
        if bytes == 0 {
            return Err(ClaimError::ZeroBytes);
        }
        let visible = get(VISIBLE_DEVICES).ok_or(ClaimError::NoCard("not set"))?;
        let gpu = visible.split(',').next().unwrap_or_default().trim();
        if gpu.is_empty() {
            return Err(ClaimError::NoCard("empty"));
        }
        let lease_ids = get(LEASE_ID).unwrap_or_default();
        Ok(Claim {
            bytes,
            lease_id: lease_ids
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            lease_ids: lease_ids.trim().to_string(),
            gpu: gpu.to_string(),
            claim_uid: get(CLAIM_UID).filter(|uid| !uid.is_empty()),
        })
    }

    /// Whether the voices' bytes and the lip-sync model's fit the claim's budget.
    pub fn check(&self, voices: u64, lip_sync: u64) -> Result<(), ClaimError> {
        let total = voices.saturating_add(lip_sync);
        if total > self.bytes {
            return Err(ClaimError::DoesNotFit {
                voices: voices.into(),
                lip_sync: lip_sync.into(),
                total: total.into(),
                budget: self.bytes.into(),
            });
        }
        Ok(())
    }

    /// The claim's card, as the service reports it.
    pub fn card(&self) -> Card {
        let index = self.gpu.parse::<u32>().ok();
        Card {
            uuid: if index.is_some() {
                String::new()
            } else {
                self.gpu.clone()
            },
            index,
            chosen_by: ChosenBy::Claim,
        }
    }
}

/// Where the service runs now, and under which lease: the planned card, completed and kept
/// current by the lease. Cheap to clone; `ListVoices` reports it.
#[derive(Clone, Debug, Default)]
pub struct CardState {
    inner: Arc<Mutex<Option<Now>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Now {
    uuid: String,
    index: Option<u32>,
    chosen_by: ChosenBy,
    lease_id: String,
    lease_bytes: u64,
}

impl CardState {
    /// The card of the plan (None: not pinned, known once a lease is granted).
    pub fn new(card: Option<Card>) -> CardState {
        CardState {
            inner: Arc::new(Mutex::new(card.map(|card| Now {
                uuid: card.uuid,
                index: card.index,
                chosen_by: card.chosen_by,
                lease_id: String::new(),
                lease_bytes: 0,
            }))),
        }
    }

    /// The claim's card, under the claim's lease for as long as the service runs.
    pub fn claimed(claim: &Claim) -> CardState {
        let state = CardState::new(Some(claim.card()));
        if let Some(now) = state.lock().as_mut() {
            now.lease_id = claim.lease_id.clone();
            now.lease_bytes = claim.bytes;
        }
        state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Now>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The voices' lease was granted: the supervisor's uuid and index complete the card.
    /// Returns a warning when the grant is on another card than the one the models run on
    /// (which a pinned request never gets; an environment's MIG entry, asked as any, may).
    pub fn granted(&self, lease: &spb::Lease) -> Option<String> {
        let mut now = self.lock();
        let mut warning = None;
        match now.as_mut() {
            None => {
                *now = Some(Now {
                    uuid: lease.gpu_uuid.clone(),
                    index: Some(lease.gpu_index),
                    chosen_by: ChosenBy::Lease,
                    lease_id: lease.lease_id.clone(),
                    lease_bytes: lease.bytes,
                });
            }
            // A MIG instance's lease is asked as any: which card it landed on says nothing
            // of where the instance is.
            Some(card) if card.uuid.starts_with("MIG-") => {
                card.lease_id = lease.lease_id.clone();
                card.lease_bytes = lease.bytes;
            }
            Some(card) => {
                let other_uuid = !card.uuid.is_empty() && card.uuid != lease.gpu_uuid;
                let other_index = card.uuid.is_empty() && card.index != Some(lease.gpu_index);
                if other_uuid || other_index {
                    warning = Some(format!(
                        "the lease is on GPU {} ({}), but the models run on {}",
                        lease.gpu_index,
                        lease.gpu_uuid,
                        if card.uuid.is_empty() {
                            format!("GPU {}", card.index.unwrap_or_default())
                        } else {
                            card.uuid.clone()
                        }
                    ));
                } else {
                    card.uuid = lease.gpu_uuid.clone();
                    card.index = Some(lease.gpu_index);
                }
                card.lease_id = lease.lease_id.clone();
                card.lease_bytes = lease.bytes;
            }
        }
        warning
    }

    /// The voices' lease ended (lost, revoked): the card stays, without a lease.
    pub fn lost(&self) {
        let mut now = self.lock();
        if let Some(card) = now.as_mut() {
            card.lease_id.clear();
            card.lease_bytes = 0;
            if card.chosen_by == ChosenBy::Lease {
                // Nothing pinned: the next grant may be elsewhere.
                *now = None;
            }
        }
    }

    /// As `ListVoices` reports it.
    pub fn to_pb(&self) -> Option<pb::ServiceGpu> {
        self.lock().as_ref().map(|now| pb::ServiceGpu {
            uuid: now.uuid.clone(),
            index: now.index,
            chosen_by: now.chosen_by.as_str().into(),
            lease_id: now.lease_id.clone(),
            lease_bytes: now.lease_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpu(index: u32, budget: u64, available: u64) -> spb::GpuStatus {
        spb::GpuStatus {
            index,
            uuid: format!("GPU-{index}"),
            budget_bytes: budget,
            available_bytes: available,
            ..Default::default()
        }
    }

    fn inputs<'a>(choice: &'a GpuChoice) -> Inputs<'a> {
        Inputs {
            choice,
            visible: None,
            device_order_set: false,
            gpu_work: true,
            lease_bytes: None,
            gpus: None,
        }
    }

    fn pinned(uuid: &str) -> Vec<(&'static str, String)> {
        vec![(VISIBLE_DEVICES, uuid.to_string())]
    }

    #[test]
    fn the_flag_takes_any_an_index_or_a_uuid() {
        assert_eq!("any".parse(), Ok(GpuChoice::Any));
        assert_eq!("".parse(), Ok(GpuChoice::Any));
        assert_eq!("1".parse(), Ok(GpuChoice::Index(1)));
        assert_eq!(
            "GPU-5157ad00".parse(),
            Ok(GpuChoice::Uuid("GPU-5157ad00".into()))
        );
        let error = "cuda:1".parse::<GpuChoice>().unwrap_err().to_string();
        assert!(
            error.contains("cuda:1") && error.contains("index"),
            "{error}"
        );
        assert_eq!(GpuChoice::Index(3).to_string(), "3");
    }

    #[test]
    fn an_environment_card_is_respected() {
        let any = GpuChoice::Any;
        let plan = plan(Inputs {
            visible: Some("GPU-b,GPU-c"),
            ..inputs(&any)
        })
        .unwrap();
        assert!(plan.set_env.is_empty(), "nothing is changed: {plan:?}");
        assert_eq!(plan.lease_gpu, "GPU-b");
        let card = plan.card.unwrap();
        assert_eq!(
            (card.uuid.as_str(), card.chosen_by),
            ("GPU-b", ChosenBy::Environment)
        );

        // An index there is an index; a MIG instance is asked as any.
        let plan = super::plan(Inputs {
            visible: Some("1"),
            ..inputs(&any)
        })
        .unwrap();
        assert_eq!(
            (plan.lease_gpu.as_str(), plan.card.unwrap().index),
            ("1", Some(1))
        );
        let plan = super::plan(Inputs {
            visible: Some("MIG-abc"),
            ..inputs(&any)
        })
        .unwrap();
        assert_eq!(plan.lease_gpu, "");
        assert_eq!(plan.card.unwrap().uuid, "MIG-abc");
    }

    #[test]
    fn a_flag_naming_another_card_than_the_environment_is_refused() {
        let other = GpuChoice::Index(1);
        let error = plan(Inputs {
            visible: Some("GPU-b"),
            ..inputs(&other)
        })
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("CUDA_VISIBLE_DEVICES=GPU-b") && text.contains("--gpu 1"),
            "{text}"
        );
        // The same card is fine.
        let same = GpuChoice::Uuid("GPU-b".into());
        assert!(
            plan(Inputs {
                visible: Some("GPU-b"),
                ..inputs(&same)
            })
            .is_ok()
        );
    }

    #[test]
    fn an_empty_environment_hides_every_card() {
        let choice = GpuChoice::Index(1);
        let plan = plan(Inputs {
            visible: Some(""),
            ..inputs(&choice)
        })
        .unwrap();
        assert_eq!((plan.set_env.len(), plan.card), (0, None));
        assert_eq!(plan.lease_gpu, "1", "a lease still goes where it is asked");
    }

    #[test]
    fn a_uuid_is_pinned() {
        let choice = GpuChoice::Uuid("GPU-7".into());
        let plan = plan(inputs(&choice)).unwrap();
        assert_eq!(plan.set_env, pinned("GPU-7"));
        assert_eq!(plan.lease_gpu, "GPU-7");
        assert_eq!(plan.card.unwrap().chosen_by, ChosenBy::Flag);
    }

    #[test]
    fn an_index_becomes_the_supervisors_uuid() {
        let gpus = [gpu(0, 80 * GIB, 80 * GIB), gpu(1, 80 * GIB, 10 * GIB)];
        let choice = GpuChoice::Index(1);
        let plan = plan(Inputs {
            gpus: Some(&gpus),
            ..inputs(&choice)
        })
        .unwrap();
        assert_eq!(plan.set_env, pinned("GPU-1"));
        assert_eq!(plan.lease_gpu, "GPU-1");
        assert_eq!(plan.card.unwrap().index, Some(1));

        let missing = GpuChoice::Index(5);
        let text = super::plan(Inputs {
            gpus: Some(&gpus),
            ..inputs(&missing)
        })
        .unwrap_err()
        .to_string();
        assert!(text.contains("no GPU 5") && text.contains("0, 1"), "{text}");
    }

    #[test]
    fn without_the_supervisor_an_index_is_taken_in_pci_order() {
        let choice = GpuChoice::Index(1);
        let plan = plan(inputs(&choice)).unwrap();
        assert_eq!(
            plan.set_env,
            vec![
                (DEVICE_ORDER, "PCI_BUS_ID".to_string()),
                (VISIBLE_DEVICES, "1".to_string())
            ]
        );
        assert_eq!(plan.lease_gpu, "1");
        // An order the environment set is left alone.
        let plan = super::plan(Inputs {
            device_order_set: true,
            ..inputs(&choice)
        })
        .unwrap();
        assert_eq!(plan.set_env, vec![(VISIBLE_DEVICES, "1".to_string())]);
    }

    #[test]
    fn an_index_without_gpu_work_only_steers_the_lease() {
        let choice = GpuChoice::Index(1);
        let plan = plan(Inputs {
            gpu_work: false,
            ..inputs(&choice)
        })
        .unwrap();
        assert!(plan.set_env.is_empty());
        assert_eq!(plan.lease_gpu, "1");
        assert!(!needs_status(&choice, None, false));
        assert!(needs_status(&choice, None, true));
        assert!(!needs_status(&choice, Some("GPU-1"), true));
    }

    #[test]
    fn any_is_placed_as_the_ledger_would() {
        // Best fit for a known size: the small card that fits keeps the large one free.
        let gpus = [gpu(0, 80 * GIB, 70 * GIB), gpu(1, 80 * GIB, 20 * GIB)];
        let any = GpuChoice::Any;
        let plan = plan(Inputs {
            gpus: Some(&gpus),
            lease_bytes: Some(8 * GIB),
            ..inputs(&any)
        })
        .unwrap();
        assert_eq!(plan.set_env, pinned("GPU-1"));
        assert_eq!(plan.lease_gpu, "GPU-1");
        assert_eq!(plan.card.as_ref().unwrap().chosen_by, ChosenBy::BestFit);
        // Too large for card 1: card 0.
        let plan = super::plan(Inputs {
            gpus: Some(&gpus),
            lease_bytes: Some(30 * GIB),
            ..inputs(&any)
        })
        .unwrap();
        assert_eq!(plan.lease_gpu, "GPU-0");
        // A size measured later: the most available memory.
        let plan = super::plan(Inputs {
            gpus: Some(&gpus),
            ..inputs(&any)
        })
        .unwrap();
        assert_eq!(plan.lease_gpu, "GPU-0");
        assert_eq!(plan.card.unwrap().chosen_by, ChosenBy::MostAvailable);
    }

    #[test]
    fn pick_waits_on_the_largest_budget_when_nothing_fits_and_breaks_ties_low() {
        let gpus = [gpu(0, 24 * GIB, 4 * GIB), gpu(1, 80 * GIB, 2 * GIB)];
        let (g, _) = pick(&gpus, Some(40 * GIB)).unwrap();
        assert_eq!(g.index, 1);
        let even = [gpu(0, 80 * GIB, 9 * GIB), gpu(1, 80 * GIB, 9 * GIB)];
        assert_eq!(pick(&even, None).unwrap().0.index, 0);
        assert_eq!(pick(&even, Some(GIB)).unwrap().0.index, 0);
        assert!(pick(&[], None).is_none());
    }

    #[test]
    fn any_without_the_supervisor_is_nvml_card_zero() {
        let any = GpuChoice::Any;
        let plan = plan(inputs(&any)).unwrap();
        assert_eq!(plan.lease_gpu, "0");
        assert_eq!(plan.card.unwrap().chosen_by, ChosenBy::Default);
        // With no cards at all from the supervisor, too.
        let plan = super::plan(Inputs {
            gpus: Some(&[]),
            ..inputs(&any)
        })
        .unwrap();
        assert_eq!(plan.lease_gpu, "0");
    }

    #[test]
    fn any_without_gpu_work_pins_nothing() {
        let any = GpuChoice::Any;
        let plan = plan(Inputs {
            gpu_work: false,
            ..inputs(&any)
        })
        .unwrap();
        assert_eq!(
            plan,
            Plan {
                set_env: Vec::new(),
                lease_gpu: String::new(),
                card: None
            }
        );
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn a_claim_is_read_from_the_environment() {
        let claim = Claim::from_env(env(&[
            (LEASE_BYTES, "4294967296"),
            (LEASE_ID, "lease-a,lease-b"),
            (VISIBLE_DEVICES, "GPU-a,GPU-b"),
            (CLAIM_UID, "uid-1"),
        ]))
        .unwrap();
        assert_eq!(claim.bytes, 4 * GIB);
        assert_eq!(claim.lease_id, "lease-a");
        assert_eq!(claim.lease_ids, "lease-a,lease-b");
        assert_eq!(claim.gpu, "GPU-a");
        assert_eq!(claim.claim_uid.as_deref(), Some("uid-1"));
        // Units are read too; the lease id may be missing.
        let claim =
            Claim::from_env(env(&[(LEASE_BYTES, "2GiB"), (VISIBLE_DEVICES, "GPU-a")])).unwrap();
        assert_eq!((claim.bytes, claim.lease_id.as_str()), (2 * GIB, ""));
        assert_eq!(claim.card().chosen_by, ChosenBy::Claim);
    }

    #[test]
    fn a_claim_without_bytes_or_card_says_what_is_missing() {
        let text = |pairs: &[(&str, &str)]| Claim::from_env(env(pairs)).unwrap_err().to_string();
        let missing = text(&[(VISIBLE_DEVICES, "GPU-a")]);
        assert!(
            missing.contains("ARBITER_LEASE_BYTES is not set"),
            "{missing}"
        );
        let garbage = text(&[(LEASE_BYTES, "lots"), (VISIBLE_DEVICES, "GPU-a")]);
        assert!(garbage.contains("`lots` is not a byte count"), "{garbage}");
        let zero = text(&[(LEASE_BYTES, "0"), (VISIBLE_DEVICES, "GPU-a")]);
        assert!(zero.contains("is 0"), "{zero}");
        let no_card = text(&[(LEASE_BYTES, "1GiB")]);
        assert!(
            no_card.contains("CUDA_VISIBLE_DEVICES is not set"),
            "{no_card}"
        );
        let empty = text(&[(LEASE_BYTES, "1GiB"), (VISIBLE_DEVICES, " ")]);
        assert!(empty.contains("CUDA_VISIBLE_DEVICES is empty"), "{empty}");
    }

    #[test]
    fn the_voices_and_the_lip_sync_model_must_fit_the_claim() {
        let claim =
            Claim::from_env(env(&[(LEASE_BYTES, "4GiB"), (VISIBLE_DEVICES, "GPU-a")])).unwrap();
        assert!(claim.check(3 * GIB, GIB).is_ok(), "exactly the budget fits");
        let text = claim.check(3 * GIB, 2 * GIB).unwrap_err().to_string();
        assert!(
            text.contains("(3GiB)")
                && text.contains("(2GiB)")
                && text.contains("5GiB")
                && text.contains("(4GiB)"),
            "{text}"
        );
        assert!(claim.check(u64::MAX, u64::MAX).is_err(), "no overflow");
    }

    fn lease(id: &str, index: u32, uuid: &str, bytes: u64) -> spb::Lease {
        spb::Lease {
            lease_id: id.into(),
            gpu_index: index,
            gpu_uuid: uuid.into(),
            bytes,
            ..Default::default()
        }
    }

    #[test]
    fn the_state_follows_the_lease() {
        // Pinned by index only: the grant names the uuid.
        let state = CardState::new(Some(Card {
            uuid: String::new(),
            index: Some(1),
            chosen_by: ChosenBy::Flag,
        }));
        assert_eq!(state.granted(&lease("l1", 1, "GPU-1", GIB)), None);
        let now = state.to_pb().unwrap();
        assert_eq!(
            (
                now.uuid.as_str(),
                now.index,
                now.lease_id.as_str(),
                now.lease_bytes,
                now.chosen_by.as_str()
            ),
            ("GPU-1", Some(1), "l1", GIB, "flag")
        );
        state.lost();
        let now = state.to_pb().unwrap();
        assert_eq!(
            (now.uuid.as_str(), now.lease_id.as_str(), now.lease_bytes),
            ("GPU-1", "", 0)
        );
        // A grant on another card is reported, and the card the models are on kept.
        let warning = state.granted(&lease("l2", 0, "GPU-0", GIB)).unwrap();
        assert!(
            warning.contains("GPU-0") && warning.contains("GPU-1"),
            "{warning}"
        );
        assert_eq!(state.to_pb().unwrap().uuid, "GPU-1");
    }

    #[test]
    fn an_unpinned_state_is_wherever_the_lease_is() {
        let state = CardState::new(None);
        assert_eq!(state.to_pb(), None);
        state.granted(&lease("l1", 2, "GPU-2", GIB));
        let now = state.to_pb().unwrap();
        assert_eq!((now.index, now.chosen_by.as_str()), (Some(2), "lease"));
        state.lost();
        assert_eq!(state.to_pb(), None);
    }

    #[test]
    fn a_claimed_state_holds_the_claims_lease() {
        let claim = Claim::from_env(env(&[
            (LEASE_BYTES, "1GiB"),
            (LEASE_ID, "lease-k"),
            (VISIBLE_DEVICES, "GPU-k"),
        ]))
        .unwrap();
        let now = CardState::claimed(&claim).to_pb().unwrap();
        assert_eq!(
            (
                now.uuid.as_str(),
                now.index,
                now.chosen_by.as_str(),
                now.lease_id.as_str(),
                now.lease_bytes
            ),
            ("GPU-k", None, "claim", "lease-k", GIB)
        );
    }
}
