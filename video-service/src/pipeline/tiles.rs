//! Tiled VAE decoding: the decoder sees one tile of the latent video at a time, so the
//! memory a decode needs is bounded by the tile, not by the video.
//!
//! A video VAE's activations grow with the pixels it produces, and for a long or large video
//! they are what runs out of memory first, long before the latents or the finished video do.
//! Decoding overlapping tiles and blending them keeps the peak at one tile's activations;
//! the only full-size tensors are the output being accumulated (float32) and the result.
//!
//! The decoder is causal in time with factor `temporal` (8 for LTX-like pipelines): latent
//! frame 0 gives output frame 0 and latent frame `k >= 1` gives output frames
//! `(k-1)*temporal+1 ..= k*temporal`. A tile of latent frames `[t0, t1)` decoded on its own
//! treats its first frame as a video's first frame, so it yields `1 + (t1-t0-1)*temporal`
//! frames, which stand for global output frames `t0*temporal ..= (t1-1)*temporal`. Two
//! consecutive temporal tiles therefore have to share at least one latent frame, or the
//! frames between them would come from no tile. Spatially the factor is `spatial` (32 for
//! LTX-like pipelines) each way, and tiles need not overlap (though seams show if they do
//! not).
//!
//! Where tiles overlap, each one's contribution ramps linearly across the overlap (measured
//! in output pixels or frames) on the sides where it has a neighbour, and is 1 elsewhere;
//! the output is the weighted sum divided by the sum of the weights. The ramps of two
//! neighbours add up to 1 across their overlap, so a decoder that is linear and local gives
//! the same video tiled as untiled.

use std::fmt;

use tch::{Kind, TchError, Tensor};

/// How to cut a latent video into tiles, in latent units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tiling {
    /// A tile's height and width, in latent pixels.
    pub spatial: i64,
    /// How many latent pixels neighbouring tiles share, each way (at least; the last tile
    /// in a row or column may share more, see [`tiles`]).
    pub spatial_overlap: i64,
    /// A tile's length, in latent frames.
    pub temporal: i64,
    /// How many latent frames neighbouring tiles share: at least 1 when the video takes
    /// more than one tile in time, because of the causal decoder (see the module's docs).
    pub temporal_overlap: i64,
}

/// How much larger the decoder's output is than its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Factors {
    /// Output pixels per latent pixel, each way.
    pub spatial: i64,
    /// Output frames per latent frame after the first (the first gives one frame).
    pub temporal: i64,
}

/// A half-open range `[start, end)` along one axis, in latent units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: i64,
    pub end: i64,
}

impl Span {
    pub fn len(&self) -> i64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// One tile of the plan: latent frames `t`, rows `y` and columns `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub t: Span,
    pub y: Span,
    pub x: Span,
}

impl Tile {
    /// The tile's size in latent elements per channel: frames × rows × columns.
    pub fn elements(&self) -> i64 {
        self.t.len() * self.y.len() * self.x.len()
    }
}

impl fmt::Display for Tile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latent frames {}, rows {}, columns {}",
            self.t, self.y, self.x
        )
    }
}

/// What a tiled decode did, for logs and for checking the memory it was sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileStats {
    /// How many times the decoder ran.
    pub tiles: usize,
    /// The largest tile it was given (by latent elements), as `[frames, rows, columns]`:
    /// the decode's peak memory is that of decoding this tile (plus the accumulated output).
    pub largest_tile: [i64; 3],
}

/// Why a video could not be decoded in tiles.
#[derive(Debug, thiserror::Error)]
pub enum TileError {
    #[error("the {axis} tile size must be positive, not {size}")]
    TileSize { axis: &'static str, size: i64 },
    #[error(
        "the {axis} overlap must be at least 0 and smaller than the tile size {size}, not {overlap}"
    )]
    Overlap {
        axis: &'static str,
        overlap: i64,
        size: i64,
    },
    #[error(
        "{frames} latent frames take more than one temporal tile of {size}, so tiles must share at least one latent frame (temporal_overlap >= 1): the causal decoder gives no frames between tiles that share none"
    )]
    TemporalOverlap { frames: i64, size: i64 },
    #[error("the decoder's {axis} factor must be positive, not {factor}")]
    Factor { axis: &'static str, factor: i64 },
    #[error(
        "latents must be [batch, channels, frames, height, width] with no empty axis, not {0:?}"
    )]
    Latents(Vec<i64>),
    #[error("the decoder failed on the tile of {tile}: {source}")]
    Decoder { tile: Tile, source: TchError },
    #[error("the decoder turned the tile of {tile} into {found:?}; expected {expected}")]
    Shape {
        tile: Tile,
        expected: String,
        found: Vec<i64>,
    },
    #[error("libtorch failed while blending tiles: {0}")]
    Torch(#[from] TchError),
}

/// The tiles that cover a latent video of `t` frames of `h × w`, in decoding order (time,
/// then rows, then columns).
///
/// Along each axis tiles start every `size - overlap`; when the axis is not covered exactly,
/// the last tile is moved back to end at the edge rather than padded (it then shares more
/// than `overlap` with the one before it), so every tile is real latents and none is larger
/// than the tiling. An axis that fits in one tile gets one tile of its own size.
pub fn tiles(t: i64, h: i64, w: i64, tiling: Tiling) -> Result<Vec<Tile>, TileError> {
    Ok(Plan::new([t, h, w], tiling)?.tiles())
}

/// Decodes `latents` (`[batch, channels, frames, height, width]`) one tile at a time with
/// `decode`, and blends the tiles into the video `decode` would have produced from the
/// whole: `[batch, out channels, 1 + (frames-1)*temporal, height*spatial, width*spatial]`,
/// on the latents' device, in the decoder's dtype. Also says how many tiles it decoded and
/// the largest, which is what the decode's peak memory follows.
///
/// When the latents fit in one tile, `decode` runs once on them as they are and its output
/// is returned untouched. Otherwise it runs once per tile of [`tiles`], each tile a
/// contiguous copy of its latents, and the tiles accumulate in float32 on the latents'
/// device. Runs without autograd: a graph kept across tiles would hold every tile's
/// activations and undo the point of tiling.
pub fn decode_tiled(
    latents: &Tensor,
    tiling: Tiling,
    factors: Factors,
    decode: &mut dyn FnMut(&Tensor) -> Result<Tensor, TchError>,
) -> Result<(Tensor, TileStats), TileError> {
    check_factor("spatial", factors.spatial)?;
    check_factor("temporal", factors.temporal)?;
    let shape = latents.size();
    let &[batch, _, t, h, w] = shape.as_slice() else {
        return Err(TileError::Latents(shape));
    };
    if shape.iter().any(|&size| size <= 0) {
        return Err(TileError::Latents(shape));
    }
    let plan = Plan::new([t, h, w], tiling)?;
    let tiles = plan.tiles();
    let stats = TileStats {
        tiles: tiles.len(),
        largest_tile: tiles
            .iter()
            .max_by_key(|tile| tile.elements())
            .map_or([0; 3], |tile| [tile.t.len(), tile.y.len(), tile.x.len()]),
    };
    let scales = [
        Scale::causal(factors.temporal),
        Scale::spatial(factors.spatial),
        Scale::spatial(factors.spatial),
    ];
    tch::no_grad(|| {
        if let [whole] = tiles.as_slice() {
            let video = run(decode, latents, whole)?;
            check_shape(&video, whole, &scales, batch, None)?;
            return Ok((video, stats));
        }
        let device = latents.device();
        let [time, rows, columns] = &plan.spans;
        let axes = [
            Axis::new(2, time, scales[0], device)?,
            Axis::new(3, rows, scales[1], device)?,
            Axis::new(4, columns, scales[2], device)?,
        ];
        let mut blend: Option<Blend> = None;
        for (index, tile) in tiles.iter().enumerate() {
            let input = latents
                .f_narrow(2, tile.t.start, tile.t.len())?
                .f_narrow(3, tile.y.start, tile.y.len())?
                .f_narrow(4, tile.x.start, tile.x.len())?
                .f_contiguous()?;
            let decoded = run(decode, &input, tile)?;
            drop(input);
            check_shape(
                &decoded,
                tile,
                &scales,
                batch,
                blend.as_ref().map(|blend| blend.channels),
            )?;
            let blend = match &mut blend {
                Some(blend) => blend,
                None => blend.insert(Blend::new(&decoded, batch, &axes)?),
            };
            blend.add(&decoded, plan.position(index), &axes)?;
        }
        match blend {
            Some(blend) => Ok((blend.finish(&axes)?, stats)),
            // Unreachable: a plan has at least one tile, and a plan of one took the branch
            // above; this answer only keeps the function total.
            None => Err(TileError::Latents(shape)),
        }
    })
}

fn run(
    decode: &mut dyn FnMut(&Tensor) -> Result<Tensor, TchError>,
    input: &Tensor,
    tile: &Tile,
) -> Result<Tensor, TileError> {
    decode(input).map_err(|source| TileError::Decoder {
        tile: *tile,
        source,
    })
}

fn check_factor(axis: &'static str, factor: i64) -> Result<(), TileError> {
    if factor <= 0 {
        return Err(TileError::Factor { axis, factor });
    }
    Ok(())
}

/// Checks that the decoder gave the shape the factors promise for `tile` (and, after the
/// first tile, as many channels as the first).
fn check_shape(
    decoded: &Tensor,
    tile: &Tile,
    scales: &[Scale; 3],
    batch: i64,
    channels: Option<i64>,
) -> Result<(), TileError> {
    let expected = [
        Some(batch),
        channels,
        Some(scales[0].output(tile.t).1),
        Some(scales[1].output(tile.y).1),
        Some(scales[2].output(tile.x).1),
    ];
    let found = decoded.size();
    let fits = found.len() == expected.len()
        && found
            .iter()
            .zip(&expected)
            .all(|(&size, want)| want.is_none_or(|want| want == size));
    if fits {
        return Ok(());
    }
    let expected = expected
        .iter()
        .map(|size| size.map_or("_".to_string(), |size| size.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(TileError::Shape {
        tile: *tile,
        expected: format!("[{expected}]"),
        found,
    })
}

/// The spans along each axis (time, rows, columns); the tiles are every combination.
struct Plan {
    spans: [Vec<Span>; 3],
}

impl Plan {
    fn new([t, h, w]: [i64; 3], tiling: Tiling) -> Result<Plan, TileError> {
        if t <= 0 || h <= 0 || w <= 0 {
            return Err(TileError::Latents(vec![t, h, w]));
        }
        let time = spans("temporal", t, tiling.temporal, tiling.temporal_overlap)?;
        if time.len() > 1 && tiling.temporal_overlap < 1 {
            return Err(TileError::TemporalOverlap {
                frames: t,
                size: tiling.temporal,
            });
        }
        let rows = spans("spatial", h, tiling.spatial, tiling.spatial_overlap)?;
        let columns = spans("spatial", w, tiling.spatial, tiling.spatial_overlap)?;
        Ok(Plan {
            spans: [time, rows, columns],
        })
    }

    fn tiles(&self) -> Vec<Tile> {
        let [time, rows, columns] = &self.spans;
        let mut tiles = Vec::with_capacity(time.len() * rows.len() * columns.len());
        for &t in time {
            for &y in rows {
                for &x in columns {
                    tiles.push(Tile { t, y, x });
                }
            }
        }
        tiles
    }

    /// Which span along each axis the tile at `index` of [`Plan::tiles`] has.
    fn position(&self, index: usize) -> [usize; 3] {
        let rows = self.spans[1].len();
        let columns = self.spans[2].len();
        [
            index / (rows * columns),
            index / columns % rows,
            index % columns,
        ]
    }
}

/// The spans that cover `0..length` with tiles of `size` sharing at least `overlap`.
fn spans(axis: &'static str, length: i64, size: i64, overlap: i64) -> Result<Vec<Span>, TileError> {
    if size <= 0 {
        return Err(TileError::TileSize { axis, size });
    }
    if overlap < 0 || overlap >= size {
        return Err(TileError::Overlap {
            axis,
            overlap,
            size,
        });
    }
    if length <= size {
        return Ok(vec![Span {
            start: 0,
            end: length,
        }]);
    }
    let stride = size - overlap;
    let mut spans = Vec::new();
    let mut start = 0;
    while start + size < length {
        spans.push(Span {
            start,
            end: start + size,
        });
        start += stride;
    }
    spans.push(Span {
        start: length - size,
        end: length,
    });
    Ok(spans)
}

/// How a latent span maps to output along one axis.
#[derive(Clone, Copy, Debug)]
struct Scale {
    factor: i64,
    /// The first latent position gives one output position, the others `factor` each.
    causal: bool,
}

impl Scale {
    fn spatial(factor: i64) -> Scale {
        Scale {
            factor,
            causal: false,
        }
    }

    fn causal(factor: i64) -> Scale {
        Scale {
            factor,
            causal: true,
        }
    }

    /// Where a latent span's output starts, and how long it is. A causal span's first
    /// frame is decoded as a video's first frame and stands for the last output frame of
    /// its latent frame, `start * factor`.
    fn output(&self, span: Span) -> (i64, i64) {
        let length = if self.causal {
            1 + (span.len() - 1) * self.factor
        } else {
            span.len() * self.factor
        };
        (span.start * self.factor, length)
    }
}

/// One axis of a tiled decode, in output units: where each span's output lands, its
/// blending weights, and the sum of every span's weights.
struct Axis {
    /// The tensor dimension this axis is.
    dim: i64,
    /// Each span's output: start and length.
    outputs: Vec<(i64, i64)>,
    /// Each span's weights, shaped to broadcast along `dim`.
    weights: Vec<Tensor>,
    /// The sum of all spans' weights at each output position, shaped likewise.
    sum: Tensor,
    length: i64,
}

impl Axis {
    fn new(dim: i64, spans: &[Span], scale: Scale, device: tch::Device) -> Result<Axis, TchError> {
        let outputs: Vec<(i64, i64)> = spans.iter().map(|&span| scale.output(span)).collect();
        let length = outputs
            .iter()
            .map(|&(start, length)| start + length)
            .max()
            .unwrap_or(0);
        let mut sum = vec![0f32; usize::try_from(length).unwrap_or(0)];
        let mut weights = Vec::with_capacity(spans.len());
        for index in 0..outputs.len() {
            let ramp = ramp(&outputs, index);
            let (start, _) = outputs[index];
            for (total, weight) in sum.iter_mut().skip(start as usize).zip(&ramp) {
                *total += weight;
            }
            weights.push(broadcast(&ramp, dim, device)?);
        }
        Ok(Axis {
            dim,
            outputs,
            weights,
            sum: broadcast(&sum, dim, device)?,
            length,
        })
    }
}

/// The blending weight of each output position of span `index`: a linear ramp across what
/// it shares with the span before it and with the one after it, 1 elsewhere.
///
/// Across a shared stretch of `n` positions one side ramps up as `(k+1)/(n+1)` and the
/// other down as `(n-k)/(n+1)`: they add up to 1, and neither is ever 0, so every position
/// has a positive weight to divide by.
fn ramp(outputs: &[(i64, i64)], index: usize) -> Vec<f32> {
    let (start, length) = outputs[index];
    let end = start + length;
    let shared_before = index.checked_sub(1).map_or(0, |before| {
        (outputs[before].0 + outputs[before].1 - start).max(0)
    });
    let shared_after = outputs
        .get(index + 1)
        .map_or(0, |&(after, _)| (end - after).max(0));
    (0..length)
        .map(|k| {
            let mut weight = 1.0;
            if k < shared_before {
                weight *= (k + 1) as f32 / (shared_before + 1) as f32;
            }
            if k >= length - shared_after {
                weight *= (length - k) as f32 / (shared_after + 1) as f32;
            }
            weight
        })
        .collect()
}

/// `values` as a float32 tensor on `device` shaped `[1, 1, n, 1, 1]` with `n` at `dim`.
fn broadcast(values: &[f32], dim: i64, device: tch::Device) -> Result<Tensor, TchError> {
    let mut shape = [1i64; 5];
    shape[dim as usize] = values.len() as i64;
    Tensor::from_slice(values)
        .f_reshape(shape)?
        .f_to_device(device)
}

/// The video being put together: the weighted sum of the tiles so far.
///
/// A tile's weight is the product of its spans' weights and the tiles are every combination
/// of spans, so the sum of the weights at a position is the product of the per-axis sums
/// ([`Axis::sum`]): no video-sized tensor of weights is needed.
struct Blend {
    sum: Tensor,
    channels: i64,
    kind: Kind,
}

impl Blend {
    fn new(first: &Tensor, batch: i64, axes: &[Axis; 3]) -> Result<Blend, TchError> {
        let channels = first.size().get(1).copied().unwrap_or(0);
        let [time, rows, columns] = axes;
        let sum = Tensor::f_zeros(
            [batch, channels, time.length, rows.length, columns.length],
            (Kind::Float, time.sum.device()),
        )?;
        Ok(Blend {
            sum,
            channels,
            kind: first.kind(),
        })
    }

    /// Adds a decoded tile, weighted, where its spans (`position`, one per axis) put it.
    fn add(
        &mut self,
        decoded: &Tensor,
        position: [usize; 3],
        axes: &[Axis; 3],
    ) -> Result<(), TchError> {
        let mut weighted = decoded
            .f_to_device(self.sum.device())?
            .f_to_kind(Kind::Float)?;
        let mut target = self.sum.shallow_clone();
        for (axis, index) in axes.iter().zip(position) {
            let (start, length) = axis.outputs[index];
            weighted = weighted.f_mul(&axis.weights[index])?;
            target = target.f_narrow(axis.dim, start, length)?;
        }
        // `target` is a view of `sum`: adding into it adds into the video.
        let _view = target.f_add_(&weighted)?;
        Ok(())
    }

    /// Divides the weighted sum by the weights, and returns it in the decoder's dtype.
    fn finish(self, axes: &[Axis; 3]) -> Result<Tensor, TchError> {
        let mut sum = self.sum;
        for axis in axes {
            sum = sum.f_div_(&axis.sum)?;
        }
        sum.f_to_kind(self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    const TILING: Tiling = Tiling {
        spatial: 4,
        spatial_overlap: 1,
        temporal: 3,
        temporal_overlap: 1,
    };
    const FACTORS: Factors = Factors {
        spatial: 4,
        temporal: 8,
    };

    /// A decoder that is linear and local, as the blending assumes: nearest-neighbour
    /// upsampling (latent frame 0 to one frame, the others to `temporal` copies each; every
    /// latent pixel to `spatial × spatial`) and then a fixed 1x1x1 convolution to RGB.
    fn decoder(factors: Factors) -> impl FnMut(&Tensor) -> Result<Tensor, TchError> {
        move |latents: &Tensor| {
            let size = latents.size();
            let (channels, frames) = (size[1], size[2]);
            let mut index = vec![0i64];
            for frame in 1..frames {
                index.extend(std::iter::repeat_n(frame, factors.temporal as usize));
            }
            let index = Tensor::from_slice(&index).f_to_device(latents.device())?;
            let weight = Tensor::f_arange(3 * channels, (latents.kind(), latents.device()))?
                .f_cos()?
                .f_reshape([3, channels, 1, 1, 1])?;
            let bias = Tensor::from_slice(&[0.5f32, -0.25, 0.125]).f_to_kind(latents.kind())?;
            latents
                .f_index_select(2, &index)?
                .f_repeat_interleave_self_int(factors.spatial, 3, None)?
                .f_repeat_interleave_self_int(factors.spatial, 4, None)?
                .f_conv3d(&weight, Some(&bias), [1, 1, 1], [0, 0, 0], [1, 1, 1], 1)
        }
    }

    /// Latents with a different value everywhere, drawn from no generator (the global one
    /// belongs to the seeded model's tests).
    fn latents(shape: [i64; 5], kind: Kind) -> Tensor {
        let count = shape.iter().product::<i64>();
        Tensor::arange(count, (Kind::Double, Device::Cpu))
            .multiply_scalar(0.37)
            .sin()
            .reshape(shape)
            .to_kind(kind)
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn the_plan_covers_every_latent_within_bounds_and_tile_size() {
        let tilings = [
            TILING,
            Tiling {
                spatial: 5,
                spatial_overlap: 0,
                temporal: 2,
                temporal_overlap: 1,
            },
            Tiling {
                spatial: 6,
                spatial_overlap: 4,
                temporal: 5,
                temporal_overlap: 3,
            },
        ];
        for tiling in tilings {
            for (t, h, w) in [(1, 1, 1), (2, 3, 4), (5, 7, 9), (9, 8, 8), (13, 16, 11)] {
                let tiles = tiles(t, h, w, tiling).unwrap();
                let mut covered = vec![0u32; (t * h * w) as usize];
                for tile in &tiles {
                    assert!(tile.t.start >= 0 && tile.t.end <= t, "{tile} of {t}");
                    assert!(tile.y.start >= 0 && tile.y.end <= h, "{tile} of {h}");
                    assert!(tile.x.start >= 0 && tile.x.end <= w, "{tile} of {w}");
                    assert!(!tile.t.is_empty() && !tile.y.is_empty() && !tile.x.is_empty());
                    assert!(tile.t.len() <= tiling.temporal, "{tile}");
                    assert!(tile.y.len() <= tiling.spatial && tile.x.len() <= tiling.spatial);
                    for f in tile.t.start..tile.t.end {
                        for y in tile.y.start..tile.y.end {
                            for x in tile.x.start..tile.x.end {
                                covered[((f * h + y) * w + x) as usize] += 1;
                            }
                        }
                    }
                }
                assert!(
                    covered.iter().all(|&count| count > 0),
                    "{tiling:?} leaves part of {t}x{h}x{w} uncovered"
                );
            }
        }
    }

    #[test]
    fn the_last_tile_is_moved_back_to_the_edge_not_padded() {
        let plan = tiles(1, 1, 10, TILING).unwrap();
        let columns: Vec<_> = plan.iter().map(|tile| (tile.x.start, tile.x.end)).collect();
        // Stride 3: 0..4, 3..7, then 6..10 would be next anyway; 10 is covered exactly.
        assert_eq!(columns, [(0, 4), (3, 7), (6, 10)]);
        let plan = tiles(1, 1, 11, TILING).unwrap();
        let columns: Vec<_> = plan.iter().map(|tile| (tile.x.start, tile.x.end)).collect();
        assert_eq!(columns, [(0, 4), (3, 7), (6, 10), (7, 11)]);
        // Consecutive temporal tiles always share a latent frame.
        let plan = tiles(8, 1, 1, TILING).unwrap();
        let frames: Vec<_> = plan.iter().map(|tile| (tile.t.start, tile.t.end)).collect();
        assert_eq!(frames, [(0, 3), (2, 5), (4, 7), (5, 8)]);
    }

    #[test]
    fn tiled_decoding_matches_untiled_for_a_linear_local_decoder() {
        let cases = [
            ([1, 4, 1, 1, 1], TILING, FACTORS),
            ([1, 4, 5, 7, 9], TILING, FACTORS),
            ([1, 4, 9, 8, 8], TILING, FACTORS),
            ([1, 2, 2, 13, 5], TILING, FACTORS),
            ([2, 3, 7, 6, 10], TILING, FACTORS),
            // A single tile, exactly the tiling's size.
            ([1, 4, 3, 4, 4], TILING, FACTORS),
            // No spatial overlap, tiles of two frames, other factors.
            (
                [1, 4, 6, 9, 7],
                Tiling {
                    spatial: 3,
                    spatial_overlap: 0,
                    temporal: 2,
                    temporal_overlap: 1,
                },
                Factors {
                    spatial: 2,
                    temporal: 4,
                },
            ),
            // Overlaps larger than half a tile, so tiles two apart overlap too.
            (
                [1, 4, 11, 10, 9],
                Tiling {
                    spatial: 5,
                    spatial_overlap: 3,
                    temporal: 4,
                    temporal_overlap: 3,
                },
                FACTORS,
            ),
        ];
        for (shape, tiling, factors) in cases {
            let latents = latents(shape, Kind::Float);
            let expected = decoder(factors)(&latents).unwrap();
            let mut seen = Vec::new();
            let mut inner = decoder(factors);
            let mut decode = |tile: &Tensor| {
                seen.push(tile.size());
                inner(tile)
            };
            let (video, stats) = decode_tiled(&latents, tiling, factors, &mut decode).unwrap();
            let [_, _, t, h, w] = shape;
            assert_eq!(video.size(), expected.size(), "{shape:?}");
            assert_eq!(video.kind(), Kind::Float);
            let difference = max_difference(&video, &expected);
            assert!(
                difference < 1e-5,
                "{shape:?} {tiling:?}: off by {difference}"
            );

            let plan = tiles(t, h, w, tiling).unwrap();
            assert_eq!(stats.tiles, plan.len());
            assert_eq!(seen.len(), plan.len());
            for size in &seen {
                assert!(size[2] <= tiling.temporal, "{size:?} for {tiling:?}");
                assert!(size[3] <= tiling.spatial && size[4] <= tiling.spatial);
            }
            let largest = seen.iter().map(|s| s[2] * s[3] * s[4]).max().unwrap();
            assert_eq!(stats.largest_tile.iter().product::<i64>(), largest);
            if plan.len() == 1 {
                assert_eq!(seen, [latents.size()]);
            }
        }
    }

    #[test]
    fn overlaps_fade_linearly_from_one_tile_to_the_next() {
        // Each tile decodes to a constant: its number. Columns 0..8 in tiles of 4 sharing
        // 2 are 0..4, 2..6, 4..8; at 2 pixels per latent pixel they share 4 pixels each.
        let tiling = Tiling {
            spatial: 4,
            spatial_overlap: 2,
            temporal: 2,
            temporal_overlap: 1,
        };
        let factors = Factors {
            spatial: 2,
            temporal: 8,
        };
        let mut calls = 0.0;
        let mut decode = |tile: &Tensor| {
            let size = tile.size();
            let video = Tensor::f_full(
                [1, 1, 1, size[3] * 2, size[4] * 2],
                calls,
                (Kind::Float, Device::Cpu),
            );
            calls += 1.0;
            video
        };
        let latents = latents([1, 1, 1, 1, 8], Kind::Float);
        let (video, stats) = decode_tiled(&latents, tiling, factors, &mut decode).unwrap();
        assert_eq!(stats.tiles, 3);
        assert_eq!(video.size(), [1, 1, 1, 2, 16]);
        let row = Vec::<f32>::try_from(video.reshape([2, 16]).get(0)).unwrap();
        let expected = [
            0.0, 0.0, 0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 1.2, 1.4, 1.6, 1.8, 2.0, 2.0, 2.0, 2.0,
        ];
        for (x, (&found, want)) in row.iter().zip(expected).enumerate() {
            assert!((found - want).abs() < 1e-6, "pixel {x}: {found} != {want}");
        }
    }

    #[test]
    fn the_result_has_the_decoders_dtype() {
        let latents = latents([1, 4, 5, 6, 6], Kind::Double);
        let expected = decoder(FACTORS)(&latents).unwrap();
        let (video, _) = decode_tiled(&latents, TILING, FACTORS, &mut decoder(FACTORS)).unwrap();
        assert_eq!(video.kind(), Kind::Double);
        assert!(max_difference(&video, &expected) < 1e-5);
    }

    #[test]
    fn bad_tilings_latents_and_decoders_are_refused() {
        let bad = |change: fn(&mut Tiling)| {
            let mut tiling = TILING;
            change(&mut tiling);
            tiles(9, 9, 9, tiling).unwrap_err()
        };
        assert!(matches!(
            bad(|t| t.spatial = 0),
            TileError::TileSize {
                axis: "spatial",
                ..
            }
        ));
        assert!(matches!(
            bad(|t| t.temporal = -1),
            TileError::TileSize {
                axis: "temporal",
                ..
            }
        ));
        assert!(matches!(
            bad(|t| t.spatial_overlap = 4),
            TileError::Overlap {
                axis: "spatial",
                ..
            }
        ));
        assert!(matches!(
            bad(|t| t.spatial_overlap = -1),
            TileError::Overlap { .. }
        ));
        assert!(matches!(
            bad(|t| t.temporal_overlap = 3),
            TileError::Overlap {
                axis: "temporal",
                ..
            }
        ));
        let error = bad(|t| t.temporal_overlap = 0);
        assert!(matches!(error, TileError::TemporalOverlap { .. }));
        assert!(
            error.to_string().contains("temporal_overlap >= 1"),
            "{error}"
        );
        // No overlap is fine when one temporal tile holds every frame.
        let mut one = TILING;
        one.temporal_overlap = 0;
        assert_eq!(tiles(3, 9, 9, one).unwrap().len(), 9);

        let mut decode = decoder(FACTORS);
        let flat = latents([4, 5, 6, 6, 1], Kind::Float).reshape([4, 5, 6, 6]);
        assert!(matches!(
            decode_tiled(&flat, TILING, FACTORS, &mut decode),
            Err(TileError::Latents(_))
        ));
        let latents = latents([1, 4, 5, 6, 6], Kind::Float);
        let zero = Factors {
            spatial: 0,
            temporal: 8,
        };
        assert!(matches!(
            decode_tiled(&latents, TILING, zero, &mut decode),
            Err(TileError::Factor {
                axis: "spatial",
                ..
            })
        ));
        // A decoder that does not scale as promised, and one that fails.
        let mut wrong = decoder(Factors {
            spatial: 2,
            temporal: 8,
        });
        assert!(matches!(
            decode_tiled(&latents, TILING, FACTORS, &mut wrong),
            Err(TileError::Shape { .. })
        ));
        let mut failing = |_: &Tensor| Err(TchError::Kind("out of memory".into()));
        let error = decode_tiled(&latents, TILING, FACTORS, &mut failing).unwrap_err();
        assert!(matches!(error, TileError::Decoder { .. }));
        assert!(error.to_string().contains("latent frames 0..3"), "{error}");
    }
}
