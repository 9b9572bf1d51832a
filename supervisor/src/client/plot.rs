//! `plot`: GPU memory over time as an SVG, one stacked area per process, from NVML samples,
//! so that a reader sees the lease, the peak and the return to zero.
//!
//! Two kinds of CSV are read, told apart by their first line:
//! - what `nvidia-smi --query-compute-apps=timestamp,pid,process_name,used_memory
//!   --format=csv,noheader,nounits -lms 100` writes: `2026/11/23 14:50:01.123, 4242,
//!   /usr/bin/python3, 20480` (MiB; with `--format=csv` a header line and `MiB` units too);
//! - a generic `t_seconds,label,bytes` (that header first; bytes as a number or `20GiB`).
//!
//! Rows with the same time are one sampling tick: a process with no row in a tick is absent
//! (0) then, and between two ticks its memory is drawn as a straight line. Several files are
//! merged into one plot (separate samplers); each file's ticks judge only its own processes,
//! which count as 0 before its first tick and after its last. nvidia-smi's timestamps are
//! its wall clock (no time zone) and generic times are used as they are, so files of the two
//! kinds line up only when their clocks agree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::cli::PlotArgs;
use arbiter::ByteSize;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: u64 = 1 << 20;
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 620;
const LEGEND_WIDTH: u32 = 330;
const FONT: &str = "sans-serif";

/// The processes' colors, bottom of the stack first (Tableau 10).
const PALETTE: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The dashed lines' colors, one per `--lease`; `--total` is black.
const LINE_PALETTE: &[RGBColor] = &[
    RGBColor(178, 24, 43),
    RGBColor(33, 102, 172),
    RGBColor(27, 120, 55),
    RGBColor(118, 42, 131),
    RGBColor(140, 81, 10),
];

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no samples")]
    Empty { path: String },
    #[error(
        "{path} line {line}: not a known sample format: expected nvidia-smi's \
         `--query-compute-apps=timestamp,pid,process_name,used_memory --format=csv,noheader,nounits` \
         rows (`2026/11/23 14:50:01.123, 4242, python3, 20480`) or a `t_seconds,label,bytes` header"
    )]
    Format { path: String, line: usize },
    #[error("{path} line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(
        "`{label}` is sampled both in {first} and in {second}: give each process's samples once"
    )]
    SharedLabel {
        label: String,
        first: String,
        second: String,
    },
    #[error("--lease `{text}`: {reason}")]
    Lease { text: String, reason: String },
    #[error("drawing the plot: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Draws the plot that `args` ask for and writes it to `--out`.
pub fn run(args: &PlotArgs) -> Result<(), PlotError> {
    let leases = args
        .leases
        .iter()
        .map(|text| parse_lease(text))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sources = Vec::new();
    for path in &args.samples {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlotError::Read {
            path: name.clone(),
            source,
        })?;
        let ticks = parse_samples(&text, &name)?;
        sources.push((name, ticks));
    }
    let timeline = Timeline::merge(&sources)?;
    let options = Options {
        title: args
            .title
            .clone()
            .unwrap_or_else(|| "GPU memory over time".into()),
        leases,
        total: args.total.map(|b| b.0),
    };
    let svg = render(&timeline, &options)?;
    write(&args.out, &svg)?;
    let (at, peak) = timeline.peak();
    println!(
        "wrote {}: {} processes over {:.1}s, peak {} at {:.1}s",
        args.out.display(),
        timeline.series.len(),
        timeline.seconds(timeline.times.len() - 1),
        ByteSize(peak),
        timeline.seconds(at)
    );
    Ok(())
}

fn write(path: &Path, svg: &str) -> Result<(), PlotError> {
    std::fs::write(path, svg).map_err(|source| PlotError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// `LABEL=BYTES`, or `BYTES` alone (labelled `lease`).
fn parse_lease(text: &str) -> Result<(String, u64), PlotError> {
    let error = |reason: String| PlotError::Lease {
        text: text.to_string(),
        reason,
    };
    let (label, bytes) = match text.rsplit_once('=') {
        Some((label, bytes)) => (label.trim(), bytes),
        None => ("lease", text),
    };
    if label.is_empty() {
        return Err(error(
            "the label before `=` is empty: write LABEL=BYTES, such as tts=40GiB".into(),
        ));
    }
    let bytes: ByteSize = bytes
        .parse()
        .map_err(|e| error(format!("{e} (write LABEL=BYTES, such as tts=40GiB)")))?;
    Ok((label.to_string(), bytes.0))
}

/// One file's samples: at each tick (microseconds), each process's bytes.
type Ticks = BTreeMap<i64, BTreeMap<String, u64>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    NvidiaSmi,
    Generic,
}

/// Reads one file of samples, telling its format from its first line (blank lines and
/// `#` comments aside).
fn parse_samples(text: &str, path: &str) -> Result<Ticks, PlotError> {
    let mut format = None;
    let mut ticks = Ticks::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = trimmed.split(',').map(str::trim).collect();
        let format = match format {
            Some(format) => format,
            None => {
                let detected = detect(&fields).ok_or_else(|| PlotError::Format {
                    path: path.to_string(),
                    line,
                })?;
                format = Some(detected.0);
                if detected.1 {
                    continue;
                }
                detected.0
            }
        };
        if format == Format::NvidiaSmi && trimmed.starts_with("No running processes found") {
            continue;
        }
        // nvidia-smi names a process `[No data]` once it is exiting and its name can no
        // longer be read: the sample belongs to a process on its way out, not a new one.
        if format == Format::NvidiaSmi && fields.get(2).is_some_and(|n| n.contains("[No data]")) {
            continue;
        }
        let error = |reason: String| PlotError::Line {
            path: path.to_string(),
            line,
            reason,
        };
        let (micros, label, bytes) = match format {
            Format::NvidiaSmi => nvidia_smi_row(&fields).map_err(error)?,
            Format::Generic => generic_row(&fields).map_err(error)?,
        };
        let tick = ticks.entry(micros).or_default();
        if tick.insert(label.clone(), bytes).is_some() {
            return Err(error(format!(
                "`{label}` has a second sample at the same time (nvidia-smi lists a process \
                 once per GPU: sample one GPU, with -i)"
            )));
        }
    }
    if ticks.is_empty() {
        return Err(PlotError::Empty {
            path: path.to_string(),
        });
    }
    Ok(ticks)
}

/// The format a file's first line shows, and whether that line is a header.
fn detect(fields: &[&str]) -> Option<(Format, bool)> {
    let first = fields[0].to_ascii_lowercase();
    if fields.len() == 3
        && first == "t_seconds"
        && fields[1].eq_ignore_ascii_case("label")
        && fields[2].eq_ignore_ascii_case("bytes")
    {
        return Some((Format::Generic, true));
    }
    if first == "timestamp" && fields.len() >= 4 {
        return Some((Format::NvidiaSmi, true));
    }
    if fields.len() >= 4 && parse_timestamp(fields[0]).is_some() {
        return Some((Format::NvidiaSmi, false));
    }
    if fields.len() >= 3 && fields[0].parse::<f64>().is_ok() {
        return Some((Format::Generic, false));
    }
    None
}

/// `timestamp, pid, process_name, used_memory`; the name may hold commas.
fn nvidia_smi_row(fields: &[&str]) -> Result<(i64, String, u64), String> {
    if fields.len() < 4 {
        return Err(format!(
            "expected `timestamp, pid, process_name, used_memory`, found {} fields",
            fields.len()
        ));
    }
    let micros = parse_timestamp(fields[0]).ok_or_else(|| {
        format!(
            "`{}` is not an nvidia-smi timestamp such as 2026/11/23 14:50:01.123",
            fields[0]
        )
    })?;
    let pid: u32 = fields[1]
        .parse()
        .map_err(|_| format!("`{}` is not a pid", fields[1]))?;
    let name = fields[2..fields.len() - 1].join(",");
    let name = name.rsplit('/').next().unwrap_or_default();
    let memory = fields[fields.len() - 1];
    let bytes = if !memory.is_empty() && memory.bytes().all(|b| b.is_ascii_digit()) {
        memory
            .parse::<u64>()
            .ok()
            .and_then(|mib| mib.checked_mul(MIB))
            .ok_or_else(|| format!("`{memory}` MiB is too large"))?
    } else {
        memory
            .parse::<ByteSize>()
            .map_err(|_| {
                format!(
                    "used memory `{memory}` is not a number of MiB (nvidia-smi writes [N/A] \
                     where it may not read a process's memory)"
                )
            })?
            .0
    };
    Ok((micros, format!("{name} (pid {pid})"), bytes))
}

/// `t_seconds, label, bytes`; the label may hold commas, bytes may carry a unit.
fn generic_row(fields: &[&str]) -> Result<(i64, String, u64), String> {
    if fields.len() < 3 {
        return Err(format!(
            "expected `t_seconds,label,bytes`, found {} fields",
            fields.len()
        ));
    }
    let seconds: f64 = fields[0]
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && s.abs() < 1e12)
        .ok_or_else(|| format!("`{}` is not a time in seconds", fields[0]))?;
    let label = fields[1..fields.len() - 1].join(",");
    if label.is_empty() {
        return Err("the label is empty".into());
    }
    let memory = fields[fields.len() - 1];
    let bytes: ByteSize = memory
        .parse()
        .map_err(|e| format!("bytes `{memory}`: {e}"))?;
    Ok(((seconds * 1e6).round() as i64, label, bytes.0))
}

/// `2026/11/23 14:50:01.123` as microseconds since 1970 on the same (zoneless) clock.
fn parse_timestamp(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once(' ')?;
    let mut parts = date.split('/');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let time = time.trim();
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':');
    let hour: i64 = parts.next()?.parse().ok()?;
    let minute: i64 = parts.next()?.parse().ok()?;
    let second: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = format!("{fraction:0<6}")[..6].parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000_000) + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Every process's memory at every time any file sampled, in stacking order.
#[derive(Debug)]
struct Timeline {
    /// Microseconds, ascending.
    times: Vec<i64>,
    series: Vec<Series>,
}

#[derive(Debug)]
struct Series {
    label: String,
    /// Bytes at each of the timeline's times.
    values: Vec<u64>,
}

impl Timeline {
    fn merge(sources: &[(String, Ticks)]) -> Result<Self, PlotError> {
        let times: Vec<i64> = sources
            .iter()
            .flat_map(|(_, ticks)| ticks.keys().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut owners: HashMap<&str, &str> = HashMap::new();
        let mut series = Vec::new();
        for (path, ticks) in sources {
            let labels: BTreeSet<&str> = ticks
                .values()
                .flat_map(|tick| tick.keys().map(String::as_str))
                .collect();
            let tick_times: Vec<i64> = ticks.keys().copied().collect();
            let tick_rows: Vec<&BTreeMap<String, u64>> = ticks.values().collect();
            for label in labels {
                if let Some(first) = owners.insert(label, path) {
                    return Err(PlotError::SharedLabel {
                        label: label.to_string(),
                        first: first.to_string(),
                        second: path.clone(),
                    });
                }
                let at = |k: usize| tick_rows[k].get(label).copied().unwrap_or(0);
                let mut k = 0;
                let values = times
                    .iter()
                    .map(|&t| {
                        if t < tick_times[0] || t > tick_times[tick_times.len() - 1] {
                            return 0;
                        }
                        while k + 1 < tick_times.len() && tick_times[k + 1] <= t {
                            k += 1;
                        }
                        if tick_times[k] == t {
                            return at(k);
                        }
                        let (t0, t1) = (tick_times[k], tick_times[k + 1]);
                        let fraction = (t - t0) as f64 / (t1 - t0) as f64;
                        let (v0, v1) = (at(k) as f64, at(k + 1) as f64);
                        (v0 + (v1 - v0) * fraction).round() as u64
                    })
                    .collect();
                series.push(Series {
                    label: label.to_string(),
                    values,
                });
            }
        }
        // The earliest process at the bottom of the stack.
        series.sort_by(|a, b| {
            let first = |s: &Series| s.values.iter().position(|&v| v > 0).unwrap_or(usize::MAX);
            first(a).cmp(&first(b)).then_with(|| a.label.cmp(&b.label))
        });
        Ok(Timeline { times, series })
    }

    /// Seconds since the first sample of the `index`th time.
    fn seconds(&self, index: usize) -> f64 {
        (self.times[index] - self.times[0]) as f64 / 1e6
    }

    /// The top edge of each series in the stack: `stacked()[s][i]` is the sum of series
    /// `0..=s` at time `i`.
    fn stacked(&self) -> Vec<Vec<u64>> {
        let mut below = vec![0u64; self.times.len()];
        self.series
            .iter()
            .map(|series| {
                for (sum, value) in below.iter_mut().zip(&series.values) {
                    *sum += value;
                }
                below.clone()
            })
            .collect()
    }

    /// The whole GPU's use at each time: the stack's top edge.
    fn totals(&self) -> Vec<u64> {
        self.stacked()
            .pop()
            .unwrap_or_else(|| vec![0; self.times.len()])
    }

    /// The time (index) and bytes of the highest total; the first such time on a tie.
    fn peak(&self) -> (usize, u64) {
        self.totals().into_iter().enumerate().fold(
            (0, 0),
            |best, (i, v)| if v > best.1 { (i, v) } else { best },
        )
    }
}

struct Options {
    title: String,
    /// Dashed lines: label and bytes.
    leases: Vec<(String, u64)>,
    /// The card's memory.
    total: Option<u64>,
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

fn draw_error(error: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(error.to_string())
}

/// The plot as SVG text: stacked areas, dashed lines, the peak, and a legend on the right.
fn render(timeline: &Timeline, options: &Options) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let xs: Vec<f64> = (0..timeline.times.len())
            .map(|i| timeline.seconds(i))
            .collect();
        let x_max = xs.last().copied().filter(|&x| x > 0.0).unwrap_or(1.0);
        let (peak_index, peak) = timeline.peak();
        let highest = options
            .leases
            .iter()
            .map(|(_, b)| *b)
            .chain(options.total)
            .fold(peak, u64::max);
        let y_max = if highest == 0 {
            1.0
        } else {
            gib(highest) * 1.12
        };

        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&options.title, (FONT, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first sample")
            .y_desc("GiB")
            .label_style((FONT, 13))
            .x_label_formatter(&tick_label)
            .y_label_formatter(&tick_label)
            .axis_desc_style((FONT, 14))
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(draw_error)?;

        // One band per process, between the stack below it and its own top edge.
        let stacked = timeline.stacked();
        let zeros = vec![0u64; xs.len()];
        for (s, top) in stacked.iter().enumerate() {
            let below = if s == 0 { &zeros } else { &stacked[s - 1] };
            let color = PALETTE[s % PALETTE.len()];
            let mut outline: Vec<(f64, f64)> =
                xs.iter().zip(top).map(|(&x, &v)| (x, gib(v))).collect();
            outline.extend(xs.iter().zip(below).rev().map(|(&x, &v)| (x, gib(v))));
            chart
                .draw_series(std::iter::once(Polygon::new(outline, color.mix(0.75))))
                .map_err(draw_error)?;
            // Its top edge, only where it holds memory (and the ramps up and down), so that a
            // band of no height does not paint over the edge of the one below it.
            let values = &timeline.series[s].values;
            for run in nonzero_runs(values) {
                chart
                    .draw_series(LineSeries::new(
                        run.map(|i| (xs[i], gib(top[i]))),
                        color.stroke_width(1),
                    ))
                    .map_err(draw_error)?;
            }
        }

        // Leases, limits and the card, dashed, labelled at their left end.
        let lines = options
            .leases
            .iter()
            .enumerate()
            .map(|(i, (label, bytes))| {
                (
                    format!("{label} {}", ByteSize(*bytes)),
                    *bytes,
                    LINE_PALETTE[i % LINE_PALETTE.len()],
                )
            })
            .chain(
                options
                    .total
                    .map(|bytes| (format!("GPU total {}", ByteSize(bytes)), bytes, BLACK)),
            )
            .collect::<Vec<_>>();
        for (label, bytes, color) in &lines {
            let y = gib(*bytes);
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, y), (x_max, y)],
                    8,
                    5,
                    color.stroke_width(2),
                ))
                .map_err(draw_error)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (x_max * 0.01, y),
                    (FONT, 13)
                        .into_font()
                        .color(color)
                        .pos(Pos::new(HPos::Left, VPos::Bottom)),
                )))
                .map_err(draw_error)?;
        }

        // The peak: a dot and its value and time, on the side with room.
        let peak_x = xs[peak_index];
        let peak_text = format!("peak {} at {:.1}s", ByteSize(peak), peak_x);
        let (anchor, dx) = if peak_x > x_max * 0.6 {
            (HPos::Right, -8)
        } else {
            (HPos::Left, 8)
        };
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((peak_x, gib(peak)))
                    + Circle::new((0, 0), 4, BLACK.filled())
                    + Text::new(
                        peak_text.clone(),
                        (dx, -8),
                        (FONT, 14)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(anchor, VPos::Bottom)),
                    ),
            ))
            .map_err(draw_error)?;

        draw_legend(&legend_area, timeline, &lines, &peak_text)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// The key: each process (top of the stack first, as drawn) with its own peak, then the
/// dashed lines, then the peak of the whole.
fn draw_legend(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    timeline: &Timeline,
    lines: &[(String, u64, RGBColor)],
    peak_text: &str,
) -> Result<(), PlotError> {
    const ROW: i32 = 20;
    const LEFT: i32 = 8;
    let text = |s: String, x: i32, y: i32, size: u32| {
        Text::new(
            s,
            (x, y),
            (FONT, size)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        )
    };
    let fits = ((HEIGHT as i32 - 60) / ROW - lines.len() as i32 - 4).max(1) as usize;
    let mut y = 40;
    area.draw(&text("processes (stacked)".into(), LEFT, y, 14))
        .map_err(draw_error)?;
    y += ROW;
    let shown = timeline.series.len().min(fits);
    for (s, series) in timeline.series.iter().enumerate().rev().take(shown) {
        let color = PALETTE[s % PALETTE.len()];
        area.draw(&Rectangle::new(
            [(LEFT, y - 6), (LEFT + 14, y + 6)],
            color.mix(0.75).filled(),
        ))
        .map_err(draw_error)?;
        let peak = series.values.iter().copied().max().unwrap_or(0);
        let label = format!(
            "{} · peak {}",
            super::truncate(&series.label, 30),
            ByteSize(peak)
        );
        area.draw(&text(label, LEFT + 22, y, 13))
            .map_err(draw_error)?;
        y += ROW;
    }
    if shown < timeline.series.len() {
        let more = format!("… and {} more", timeline.series.len() - shown);
        area.draw(&text(more, LEFT + 22, y, 13))
            .map_err(draw_error)?;
        y += ROW;
    }
    if !lines.is_empty() {
        y += ROW / 2;
    }
    for (label, _, color) in lines {
        for dash in [0, 9] {
            area.draw(&PathElement::new(
                [(LEFT + dash, y), (LEFT + dash + 5, y)],
                color.stroke_width(2),
            ))
            .map_err(draw_error)?;
        }
        area.draw(&text(label.clone(), LEFT + 22, y, 13))
            .map_err(draw_error)?;
        y += ROW;
    }
    y += ROW / 2;
    area.draw(&Circle::new((LEFT + 7, y), 4, BLACK.filled()))
        .map_err(draw_error)?;
    area.draw(&text(peak_text.to_string(), LEFT + 22, y, 13))
        .map_err(draw_error)?;
    Ok(())
}

/// The index ranges where `values` is above zero, each widened by one index on either side.
fn nonzero_runs(values: &[u64]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &v) in values.iter().enumerate() {
        match (v > 0, start) {
            (true, None) => start = Some(i.saturating_sub(1)),
            (false, Some(from)) => {
                runs.push(from..i + 1);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        runs.push(from..values.len());
    }
    runs
}

/// An axis label: the number with no trailing zeros (`10`, `2.5`).
fn tick_label(value: &f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVIDIA_SMI: &str = "\
2026/11/23 14:50:01.000, 4242, /usr/bin/python3, 1024
2026/11/23 14:50:01.100, 4242, /usr/bin/python3, 2048
2026/11/23 14:50:01.100, 5151, /opt/arbiter/bin/arbiter-video, 20480

2026/11/23 14:50:01.200, 5151, /opt/arbiter/bin/arbiter-video, 30720
";

    const GENERIC: &str = "\
t_seconds,label,bytes
0,tts,8GiB
0.5,tts,8GiB
0.5,video job 1,20GiB
1.0,tts,8GiB
1.0,video job 1,30GiB
1.5,tts,8GiB
";

    fn ticks(text: &str) -> Ticks {
        parse_samples(text, "samples.csv").unwrap()
    }

    #[test]
    fn reads_nvidia_smi_rows_grouped_into_ticks() {
        let ticks = ticks(NVIDIA_SMI);
        assert_eq!(ticks.len(), 3);
        let times: Vec<i64> = ticks.keys().copied().collect();
        assert_eq!(times[1] - times[0], 100_000);
        assert_eq!(times[2] - times[1], 100_000);
        let second = &ticks[&times[1]];
        assert_eq!(second["python3 (pid 4242)"], 2048 * MIB);
        assert_eq!(second["arbiter-video (pid 5151)"], 20 << 30);
        assert!(!ticks[&times[2]].contains_key("python3 (pid 4242)"));
    }

    #[test]
    fn reads_nvidia_smi_with_header_and_units() {
        let text = "timestamp, pid, process_name, used_gpu_memory [MiB]\n\
                    2026/11/23 14:50:01.123, 7, a,b, 512 MiB\n";
        let ticks = ticks(text);
        let (_, tick) = ticks.iter().next().unwrap();
        assert_eq!(tick["a,b (pid 7)"], 512 * MIB);
    }

    #[test]
    fn timestamps_count_days_across_months_and_years() {
        let a = parse_timestamp("2026/12/31 23:59:59.900").unwrap();
        let b = parse_timestamp("2027/01/01 00:00:00.1").unwrap();
        assert_eq!(b - a, 200_000);
        assert_eq!(parse_timestamp("1970/01/01 00:00:01"), Some(1_000_000));
        assert_eq!(parse_timestamp("2026/13/01 00:00:00"), None);
    }

    #[test]
    fn reads_generic_rows() {
        let ticks = ticks(GENERIC);
        assert_eq!(ticks.len(), 4);
        assert_eq!(ticks[&500_000]["video job 1"], 20 << 30);
        assert_eq!(ticks[&0]["tts"], 8 << 30);
        // Without a header, by shape; plain numbers are bytes.
        let ticks = parse_samples("0.25,x,4096\n", "s.csv").unwrap();
        assert_eq!(ticks[&250_000]["x"], 4096);
    }

    #[test]
    fn a_malformed_line_names_its_number() {
        let text = "t_seconds,label,bytes\n0,tts,8GiB\n0.5,tts,lots\n";
        let error = parse_samples(text, "run.csv").unwrap_err().to_string();
        assert!(error.contains("run.csv line 3"), "{error}");
        assert!(error.contains("lots"), "{error}");

        let text = "2026/11/23 14:50:01.000, 4242, python3, 1024\n\
                    2026/11/23 14:50:01.100, 4242, python3, [N/A]\n";
        let error = parse_samples(text, "smi.csv").unwrap_err().to_string();
        assert!(error.contains("smi.csv line 2"), "{error}");
        assert!(error.contains("[N/A]"), "{error}");

        let error = parse_samples("\nhello world\n", "x.csv")
            .unwrap_err()
            .to_string();
        assert!(error.contains("x.csv line 2"), "{error}");
        assert!(error.contains("not a known sample format"), "{error}");

        let error = parse_samples("0,a,1\n0,a,2\n", "d.csv")
            .unwrap_err()
            .to_string();
        assert!(error.contains("d.csv line 2"), "{error}");

        let error = parse_samples("t_seconds,label,bytes\n", "e.csv").unwrap_err();
        assert!(matches!(error, PlotError::Empty { .. }));
    }

    #[test]
    fn the_stack_top_is_the_sum_at_every_tick() {
        let timeline = Timeline::merge(&[("g.csv".into(), ticks(GENERIC))]).unwrap();
        assert_eq!(timeline.times, vec![0, 500_000, 1_000_000, 1_500_000]);
        // tts came first, so it is at the bottom.
        assert_eq!(timeline.series[0].label, "tts");
        assert_eq!(timeline.series[1].label, "video job 1");
        // Absent from a tick means 0 there (the job is gone at 1.5s).
        assert_eq!(timeline.series[1].values, vec![0, 20 << 30, 30 << 30, 0]);
        let stacked = timeline.stacked();
        for i in 0..timeline.times.len() {
            let sum: u64 = timeline.series.iter().map(|s| s.values[i]).sum();
            assert_eq!(stacked.last().unwrap()[i], sum);
            assert_eq!(stacked[0][i], timeline.series[0].values[i]);
        }
        assert_eq!(timeline.peak(), (2, 38 << 30));
    }

    #[test]
    fn merged_files_are_judged_by_their_own_ticks() {
        let a = parse_samples("0,a,10\n1,a,20\n", "a.csv").unwrap();
        let b = parse_samples("0.5,b,5\n2,b,5\n", "b.csv").unwrap();
        let timeline = Timeline::merge(&[("a.csv".into(), a), ("b.csv".into(), b)]).unwrap();
        assert_eq!(timeline.times, vec![0, 500_000, 1_000_000, 2_000_000]);
        // a between its ticks is interpolated, not absent; after its last tick it is 0.
        assert_eq!(timeline.series[0].values, vec![10, 15, 20, 0]);
        assert_eq!(timeline.series[1].values, vec![0, 5, 5, 5]);
        assert_eq!(timeline.totals(), vec![10, 20, 25, 5]);

        let a = parse_samples("0,a,10\n", "a.csv").unwrap();
        let error = Timeline::merge(&[("a.csv".into(), a.clone()), ("a2.csv".into(), a)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a.csv") && error.contains("a2.csv"),
            "{error}"
        );
    }

    #[test]
    fn edges_are_drawn_where_a_process_holds_memory() {
        assert_eq!(nonzero_runs(&[0, 0, 5, 5, 0, 0, 3]), vec![1..5, 5..7]);
        assert_eq!(nonzero_runs(&[1, 0]), vec![0..2]);
        assert!(nonzero_runs(&[0, 0]).is_empty());
        assert_eq!(tick_label(&10.0), "10");
        assert_eq!(tick_label(&2.5), "2.5");
        assert_eq!(tick_label(&0.0), "0");
    }

    #[test]
    fn bad_lease_names_the_flag() {
        assert_eq!(parse_lease("tts=40GiB").unwrap(), ("tts".into(), 40 << 30));
        assert_eq!(parse_lease("24GiB").unwrap(), ("lease".into(), 24 << 30));
        for bad in ["tts=forty", "=40GiB", "tts:40GiB", "tts="] {
            let error = parse_lease(bad).unwrap_err().to_string();
            assert!(error.starts_with("--lease"), "{error}");
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn writes_an_svg_with_the_legend_and_the_peak() {
        let dir = tempfile::tempdir().unwrap();
        let smi = dir.path().join("smi.csv");
        let generic = dir.path().join("generic.csv");
        std::fs::write(&smi, NVIDIA_SMI).unwrap();
        std::fs::write(
            &generic,
            "t_seconds,label,bytes\n0.05,tts <resident>,8GiB\n",
        )
        .unwrap();
        let out = dir.path().join("plot.svg");
        let args = PlotArgs {
            samples: vec![smi],
            out: out.clone(),
            title: Some("one job".into()),
            leases: vec!["video lease=32GiB".into()],
            total: Some(ByteSize(80 << 30)),
        };
        run(&args).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "one job",
            "python3 (pid 4242)",
            "arbiter-video (pid 5151)",
            "video lease 32GiB",
            "GPU total 80GiB",
            "peak 30GiB at 0.2s",
        ] {
            assert!(svg.contains(text), "no `{text}` in the SVG");
        }

        // Text is escaped, and a bad lease stops before anything is written.
        let args = PlotArgs {
            samples: vec![generic.clone()],
            out: out.clone(),
            title: None,
            leases: vec![],
            total: None,
        };
        run(&args).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("tts &lt;resident&gt;"));
        let args = PlotArgs {
            samples: vec![generic],
            out: dir.path().join("never.svg"),
            title: None,
            leases: vec!["nope".into()],
            total: None,
        };
        assert!(matches!(run(&args), Err(PlotError::Lease { .. })));
        assert!(!dir.path().join("never.svg").exists());
    }
}
