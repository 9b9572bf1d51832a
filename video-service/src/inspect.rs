//! `arbiter-video inspect DIR`: a pipeline's manifest as an operator reads it: the
//! components, the stages in order with what each holds on the GPU, and the lease a job
//! asks for, for the default size or a given one and with placement overrides, so the
//! effect of streaming a component can be seen before a job runs.

use std::fmt::Write;

use arbiter::ByteSize;
use arbiter::pipeline::{Manifest, Placements, Shape, StageEstimate};
use serde::Serialize;

/// The report `--json` prints.
#[derive(Serialize)]
pub struct Report<'a> {
    pub manifest: &'a Manifest,
    pub shape: ShapeRecord,
    pub placements: &'a Placements,
    pub stages: Vec<StageEstimate>,
    pub peak_bytes: u64,
    pub lease_bytes: u64,
}

#[derive(Serialize)]
pub struct ShapeRecord {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: u32,
    pub steps: u32,
}

pub fn report<'a>(manifest: &'a Manifest, shape: &Shape, placements: &'a Placements) -> Report<'a> {
    let stages = manifest.estimate(shape, placements);
    Report {
        manifest,
        shape: ShapeRecord {
            width: shape.width,
            height: shape.height,
            frames: shape.frames,
            fps: shape.fps,
            steps: shape.steps,
        },
        placements,
        peak_bytes: stages.iter().map(|s| s.total).max().unwrap_or(0),
        stages,
        lease_bytes: manifest.lease_bytes_with(shape, placements),
    }
}

/// The human form.
pub fn text(report: &Report<'_>) -> String {
    let m = report.manifest;
    let s = &report.shape;
    let mut out = String::new();
    let _ = writeln!(out, "pipeline {}: {}", m.name, m.description);
    let r = &m.rules;
    let _ = writeln!(
        out,
        "rules: width/height multiples of {}/{} from {} to {}x{}; frames {}k+{} up to {}; fps {}-{}; at most {} steps and {} s",
        r.width_multiple,
        r.height_multiple,
        r.min_side,
        r.max_width,
        r.max_height,
        r.frames_step,
        r.frames_offset,
        r.max_frames,
        r.min_fps,
        r.max_fps,
        r.max_steps,
        r.max_duration_s
    );
    if let Some(model) = &m.model {
        let _ = writeln!(
            out,
            "model: {} latent channels, {}x spatial, {}x temporal, first stage at 1/{} resolution, {} text tokens, audio {} Hz x{}",
            model.latent_channels,
            model.spatial_factor,
            model.temporal_factor,
            model.low_res_factor,
            model.text_tokens,
            model.audio_sample_rate,
            model.audio_channels
        );
    }
    if let Some(command) = &m.command {
        let _ = writeln!(out, "external command: {}", command.join(" "));
    }
    if !m.components.is_empty() {
        let _ = writeln!(out, "\ncomponents:");
        let _ = writeln!(
            out,
            "  {:<16} {:<14} {:<5} {:>10} {:>7} {:<9} {:>11}",
            "name", "role", "dtype", "weights", "blocks", "placement", "activations"
        );
        for (name, c) in &m.components {
            let placement = m.placement_of(name, report.placements);
            let _ = writeln!(
                out,
                "  {:<16} {:<14} {:<5} {:>10} {:>7} {:<9} {:>11}",
                name,
                c.role.name(),
                c.dtype.name(),
                c.parameter_bytes.to_string(),
                c.blocks,
                placement.name(),
                c.activations.to_string()
            );
        }
    }
    let _ = writeln!(
        out,
        "\nfor {}x{}, {} frames at {} fps, {} steps:",
        s.width, s.height, s.frames, s.fps, s.steps
    );
    if !report.stages.is_empty() {
        let _ = writeln!(
            out,
            "  {:<9} {:<14} {:<9} {:>10} {:>11} {:>10}",
            "stage", "component", "placement", "weights", "activations", "total"
        );
        for stage in &report.stages {
            let _ = writeln!(
                out,
                "  {:<9} {:<14} {:<9} {:>10} {:>11} {:>10}",
                stage.stage.name(),
                stage.component,
                stage.placement.name(),
                ByteSize(stage.weights).to_string(),
                ByteSize(stage.activations).to_string(),
                ByteSize(stage.total).to_string()
            );
        }
        let sum: u64 = m.components.values().map(|c| c.parameter_bytes.0).sum();
        let _ = writeln!(
            out,
            "  peak {} (every component at once would be {} of weights)",
            ByteSize(report.peak_bytes),
            ByteSize(sum)
        );
    }
    let _ = writeln!(
        out,
        "lease: {} (peak + margin {}{})",
        ByteSize(report.lease_bytes),
        m.memory.margin,
        if m.memory.peak.is_some() {
            "; the manifest's explicit peak"
        } else {
            ""
        }
    );
    out
}
