//! How much GPU memory a job needs, stage by stage: the one estimate the supervisor sizes
//! the lease from and the worker checks `auto` placement against.
//!
//! A component is held from the first to the last stage that runs it, so a transformer used
//! by `denoise` and `refine` stays loaded across the `upsample` between them: `gpu` (or
//! `auto`, which may become `gpu`) holds all its weights, `stream` two block slots plus its
//! small non-block parameters, `cpu` nothing on the GPU; `resident` is counted from the start
//! (it stays loaded once loaded, and in a persistent process it was loaded by an earlier job).
//! Each stage adds its component's activations, scaled by the video's size (and the decode
//! stage the full-size float video its tiles are blended into), and every stage pays for the
//! CUDA context. The lease is the largest stage plus the margin: peak VRAM is the largest
//! stage, not the sum.

use serde::Serialize;

use super::component::{Placement, Placements, Role, Stage};
use super::{Manifest, Shape};

/// What one stage holds on the GPU at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageEstimate {
    pub stage: Stage,
    pub component: String,
    pub placement: Placement,
    /// Weights of every component held during the stage.
    pub weights: u64,
    pub activations: u64,
    /// Context + weights + activations.
    pub total: u64,
}

impl Manifest {
    /// The placement a component runs with: the request's override, else the manifest's.
    pub fn placement_of(&self, component: &str, overrides: &Placements) -> Placement {
        overrides.get(component).copied().unwrap_or_else(|| {
            self.components
                .get(component)
                .map(|c| c.placement)
                .unwrap_or_default()
        })
    }

    /// Bytes a component holds on the GPU while one of its stages runs under `placement`.
    pub fn gpu_weight_bytes(&self, component: &str, placement: Placement) -> u64 {
        let Some(c) = self.components.get(component) else {
            return 0;
        };
        let bytes = c.parameter_bytes.0;
        match placement {
            Placement::Gpu | Placement::Resident | Placement::Auto => bytes,
            Placement::Cpu => 0,
            // Two block slots, and as much again for the embeddings and heads around them.
            Placement::Stream if c.blocks > 0 => (bytes / u64::from(c.blocks) * 3).min(bytes),
            Placement::Stream => bytes,
        }
    }

    /// A stage's activations for a video of this shape: the component's figure at the
    /// default size, scaled by the video's size for the stages whose work grows with it
    /// (the first denoising stage runs at low resolution), doubled for guidance.
    pub fn activation_bytes(&self, index: usize, shape: &Shape) -> u64 {
        let Some(spec) = self.stages.get(index) else {
            return 0;
        };
        let Some(component) = self.components.get(&spec.component) else {
            return 0;
        };
        let base = component.activations.0 as f64;
        let d = &self.defaults;
        let size = |w: u32, h: u32, f: u32| w as f64 * h as f64 * f as f64;
        let growth = (size(shape.width, shape.height, shape.frames)
            / size(d.width, d.height, d.frames).max(1.0))
        .max(1.0);
        let low_res = self.model.as_ref().map_or(1, |m| m.low_res_factor).max(1) as f64;
        let scaled = match spec.stage {
            // Prompts and images do not grow with the video.
            Stage::Text | Stage::Image => base,
            // Tiles bound the decoder's own work; the blended output is the whole video.
            Stage::Decode => base + 4.0 * 3.0 * size(shape.width, shape.height, shape.frames),
            Stage::Audio | Stage::Upsample | Stage::Refine => base * growth,
            Stage::Denoise => base * growth / (low_res * low_res),
            // Not a manifest stage: it runs no component.
            Stage::Mux => 0.0,
        };
        // Guidance batches two passes: the text stage encodes both prompts when any stage
        // guides, a sampling stage runs both when it does.
        let guided = match spec.stage {
            Stage::Text => self.stages.iter().any(|s| s.guidance.unwrap_or(1.0) > 1.0),
            _ => spec.guidance.unwrap_or(1.0) > 1.0,
        };
        (scaled * if guided { 2.0 } else { 1.0 }) as u64
    }

    /// What every stage holds, in order. Empty for pipelines without components.
    pub fn estimate(&self, shape: &Shape, overrides: &Placements) -> Vec<StageEstimate> {
        let span = |name: &str| {
            let uses = self
                .stages
                .iter()
                .enumerate()
                .filter(|(_, s)| s.component == name)
                .map(|(i, _)| i);
            (uses.clone().min(), uses.max())
        };
        (0..self.stages.len())
            .map(|index| {
                let spec = &self.stages[index];
                let weights = self
                    .components
                    .keys()
                    .map(|name| {
                        let placement = self.placement_of(name, overrides);
                        let (Some(first), Some(last)) = span(name) else {
                            return 0;
                        };
                        let held =
                            placement == Placement::Resident || (first..=last).contains(&index);
                        if held {
                            self.gpu_weight_bytes(name, placement)
                        } else {
                            0
                        }
                    })
                    .sum::<u64>();
                let activations = self.activation_bytes(index, shape);
                StageEstimate {
                    stage: spec.stage,
                    component: spec.component.clone(),
                    placement: self.placement_of(&spec.component, overrides),
                    weights,
                    activations,
                    total: self.memory.context.0 + weights + activations,
                }
            })
            .collect()
    }

    /// The lease a job of this shape needs with the manifest's placements.
    pub fn lease_bytes(&self, shape: &Shape) -> u64 {
        self.lease_bytes_with(shape, &Placements::new())
    }

    /// The lease a job of this shape needs with these placement overrides: the manifest's
    /// explicit `peak` when it has one (grown with the video), else the largest stage of
    /// [`Manifest::estimate`]; plus the margin.
    pub fn lease_bytes_with(&self, shape: &Shape, overrides: &Placements) -> u64 {
        let largest = |estimate: Vec<StageEstimate>| {
            estimate
                .iter()
                .map(|s| s.total)
                .max()
                .unwrap_or(self.memory.context.0)
        };
        let peak = match self.memory.peak {
            Some(peak) => {
                let d = &self.defaults;
                let mpf = |w: u32, h: u32, f: u32| w as f64 * h as f64 * f as f64 / 1e6;
                let extra = ((mpf(shape.width, shape.height, shape.frames)
                    - mpf(d.width, d.height, d.frames))
                .max(0.0)
                    * self.memory.per_megapixel_frame.0 as f64) as u64;
                let capped = peak.0.saturating_add(extra);
                // An explicit placement is not adapted to the cap the way `auto` is: the
                // lease must hold what the request pinned down, with `auto` at its least.
                if overrides.values().any(|p| *p != Placement::Auto) && !self.stages.is_empty() {
                    let least: Placements = self
                        .components
                        .iter()
                        .map(|(name, c)| {
                            let placement = match self.placement_of(name, overrides) {
                                Placement::Auto if c.blocks > 0 => Placement::Stream,
                                Placement::Auto => Placement::Cpu,
                                other => other,
                            };
                            (name.clone(), placement)
                        })
                        .collect();
                    capped.max(largest(self.estimate(shape, &least)))
                } else {
                    capped
                }
            }
            None => largest(self.estimate(shape, overrides)),
        };
        peak.saturating_add(self.memory.margin.0)
    }

    /// Components of a role, in name order.
    pub fn components_of(&self, role: Role) -> impl Iterator<Item = &str> {
        self.components
            .iter()
            .filter(move |(_, c)| c.role == role)
            .map(|(name, _)| name.as_str())
    }
}
