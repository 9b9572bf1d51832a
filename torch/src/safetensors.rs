//! The safetensors format, read and written here rather than through a crate, because the
//! loader (`load`) needs only the header and then reads the data section itself, in
//! parallel, straight into its destination.
//!
//! A file is an 8-byte little-endian header length `n`, `n` bytes of JSON, then the data
//! section. The JSON maps each tensor's name to `{"dtype", "shape", "data_offsets": [begin,
//! end)}` (offsets relative to the data section), plus an optional `"__metadata__"` map of
//! strings. [`read_header`] checks all of it against the file before anyone reads a byte of
//! data: a truncated or hand-edited file fails here, naming the file and the tensor, not as
//! garbage weights later.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Deserializer;
use serde::de::{MapAccess, Visitor};
use tch::{Device, Kind, Tensor};

use crate::weights_error::WeightsError;

#[cfg(target_endian = "big")]
compile_error!("safetensors data is little-endian; this reader copies bytes as they are");

/// Larger headers are refused: real ones are well under 1 MiB even for thousands of tensors,
/// and the limit stops a corrupt length from allocating gigabytes (the reference reader uses
/// the same 100 MB bound).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The writer starts the data section at a multiple of this, so tensors whose byte sizes are
/// multiples of it stay aligned for any dtype and for vectorised copies.
pub const ALIGNMENT: u64 = 64;

/// What a safetensors file holds, checked against the file's length.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// In the order of their data in the file.
    pub entries: Vec<Entry>,
    pub metadata: BTreeMap<String, String>,
    /// Where the data section starts in the file (8 + the header's length).
    pub data_start: u64,
    pub file_len: u64,
}

impl Header {
    pub fn data_len(&self) -> u64 {
        self.file_len - self.data_start
    }
}

/// One tensor: its bytes are `[begin, end)` of the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub shape: Vec<i64>,
    pub begin: u64,
    pub end: u64,
}

impl Entry {
    pub fn byte_len(&self) -> u64 {
        self.end - self.begin
    }
}

/// The safetensors dtype name for `kind`, if the format has one here.
pub fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        Kind::Float8e4m3fn => "F8_E4M3",
        _ => return None,
    })
}

/// The tch kind of a safetensors dtype name.
pub fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        "F8_E4M3" => Kind::Float8e4m3fn,
        _ => return None,
    })
}

/// Reads and checks the header of the safetensors file at `path`.
pub fn read_header(path: &Path) -> Result<Header, WeightsError> {
    let file = File::open(path).map_err(io(path, "opening"))?;
    read_header_of(&file, path)
}

/// Reads and checks the header of an open file, so that a loader reads the data of the very
/// file whose header it checked even if the path is replaced meanwhile.
pub(crate) fn read_header_of(file: &File, path: &Path) -> Result<Header, WeightsError> {
    let file_len = file
        .metadata()
        .map_err(io(path, "reading the size of"))?
        .len();
    if file_len < 8 {
        return Err(WeightsError::TooShort {
            path: path.to_path_buf(),
            len: file_len,
        });
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0)
        .map_err(io(path, "reading"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    check_header_len(path, header_len, file_len)?;
    // Bounded by MAX_HEADER_BYTES above, so the cast cannot truncate.
    let mut json = vec![0u8; header_len as usize];
    file.read_exact_at(&mut json, 8)
        .map_err(io(path, "reading"))?;
    parse(path, &json, 8 + header_len, file_len)
}

/// Reads and checks the header of a file already in memory (the weight pool's mapping of
/// it), with the same checks as [`read_header`]: the tensors it returns are views of `bytes`.
pub fn header_of_bytes(path: &Path, bytes: &[u8]) -> Result<Header, WeightsError> {
    let file_len = bytes.len() as u64;
    let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(WeightsError::TooShort {
            path: path.to_path_buf(),
            len: file_len,
        });
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    check_header_len(path, header_len, file_len)?;
    // Bounded by the file's length above.
    parse(path, &rest[..header_len as usize], 8 + header_len, file_len)
}

/// The 8-byte header length of a file of `file_len` (at least 8) bytes, checked against the
/// file and the largest header read.
fn check_header_len(path: &Path, header_len: u64, file_len: u64) -> Result<(), WeightsError> {
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(WeightsError::HeaderLength {
            path: path.to_path_buf(),
            header_len,
            file_len,
            max: MAX_HEADER_BYTES,
        });
    }
    Ok(())
}

/// Checks the JSON header of a file whose data section is `[data_start, file_len)`.
fn parse(path: &Path, json: &[u8], data_start: u64, file_len: u64) -> Result<Header, WeightsError> {
    let pairs = Pairs::parse(json).map_err(|e| WeightsError::HeaderJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let data_len = file_len - data_start;
    let mut entries = Vec::with_capacity(pairs.len());
    let mut metadata = BTreeMap::new();
    for (name, value) in pairs {
        if name == "__metadata__" {
            metadata = parse_metadata(path, value)?;
        } else {
            entries.push(parse_entry(path, name, &value, data_len)?);
        }
    }
    entries.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    check_overlaps(path, &entries)?;
    Ok(Header {
        entries,
        metadata,
        data_start,
        file_len,
    })
}

fn parse_metadata(
    path: &Path,
    value: serde_json::Value,
) -> Result<BTreeMap<String, String>, WeightsError> {
    let bad = |problem: String| WeightsError::BadMetadata {
        path: path.to_path_buf(),
        problem,
    };
    let serde_json::Value::Object(map) = value else {
        return Err(bad(format!("found {value}")));
    };
    map.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            other => Err(bad(format!("{key:?} is {other}"))),
        })
        .collect()
}

fn parse_entry(
    path: &Path,
    name: String,
    value: &serde_json::Value,
    data_len: u64,
) -> Result<Entry, WeightsError> {
    let bad = |problem: &str| WeightsError::BadEntry {
        path: path.to_path_buf(),
        name: name.clone(),
        problem: problem.to_string(),
    };
    let dtype = value
        .get("dtype")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| bad("no \"dtype\" string"))?;
    let Some(kind) = kind_of(dtype) else {
        return Err(WeightsError::UnknownDtype {
            path: path.to_path_buf(),
            name,
            dtype: dtype.to_string(),
        });
    };
    let shape = value
        .get("shape")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad("no \"shape\" array"))?
        .iter()
        .map(|d| d.as_i64().filter(|d| *d >= 0))
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| bad("\"shape\" holds something other than non-negative integers"))?;
    let offsets = value
        .get("data_offsets")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad("no \"data_offsets\" array"))?;
    let [begin, end] = offsets.as_slice() else {
        return Err(bad("\"data_offsets\" must be [begin, end]"));
    };
    let (Some(begin), Some(end)) = (begin.as_u64(), end.as_u64()) else {
        return Err(bad("\"data_offsets\" must be non-negative integers"));
    };
    if begin > end {
        return Err(bad("\"data_offsets\" begin after end"));
    }
    if end > data_len {
        return Err(WeightsError::OutOfRange {
            path: path.to_path_buf(),
            name,
            begin,
            end,
            data_len,
        });
    }
    let element = kind.elt_size_in_bytes() as u64;
    let expected = shape
        .iter()
        .try_fold(element, |acc, d| acc.checked_mul(d.unsigned_abs()))
        .ok_or_else(|| bad("shape overflows 64 bits"))?;
    if expected != end - begin {
        return Err(WeightsError::SizeMismatch {
            path: path.to_path_buf(),
            name,
            expected,
            actual: end - begin,
        });
    }
    Ok(Entry {
        name,
        kind,
        shape,
        begin,
        end,
    })
}

/// `entries` sorted by offset: every byte belongs to at most one tensor. Empty tensors own
/// no bytes and may sit anywhere. Gaps are allowed (the format does not forbid them).
fn check_overlaps(path: &Path, entries: &[Entry]) -> Result<(), WeightsError> {
    let mut furthest: Option<&Entry> = None;
    for entry in entries.iter().filter(|e| e.begin < e.end) {
        if let Some(previous) = furthest.filter(|p| p.end > entry.begin) {
            return Err(WeightsError::Overlap {
                path: path.to_path_buf(),
                first: previous.name.clone(),
                second: entry.name.clone(),
            });
        }
        if furthest.is_none_or(|p| entry.end > p.end) {
            furthest = Some(entry);
        }
    }
    Ok(())
}

/// The header's top-level object as its pairs, refusing duplicate names (which a plain map
/// would silently collapse, leaving one tensor's bytes unaccounted for).
struct Pairs(Vec<(String, serde_json::Value)>);

impl Pairs {
    fn parse(json: &[u8]) -> Result<Vec<(String, serde_json::Value)>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let pairs = (&mut de).deserialize_map(PairsVisitor)?;
        // Trailing spaces are the format's padding; anything else is an error.
        de.end()?;
        Ok(pairs.0)
    }
}

struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Pairs;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object mapping tensor names to their dtype, shape and data_offsets")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
        let mut pairs = Vec::new();
        let mut seen = HashSet::new();
        while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("{key:?} appears twice")));
            }
            pairs.push((key, value));
        }
        Ok(Pairs(pairs))
    }
}

/// Writes `tensors` to a safetensors file at `path`, atomically (a temporary file beside it,
/// synced, then renamed over it), and returns the file's size in bytes.
///
/// The header is padded with spaces so that the data section starts at a multiple of
/// [`ALIGNMENT`], and tensors are written back to back, as the reference reader requires.
/// Tensors whose byte sizes are multiples of [`ALIGNMENT`] go first, so they all stay
/// aligned; the rest follow by decreasing element size, so every tensor's offset is at
/// least a multiple of its own element size (which the loader needs to return views rather
/// than copies). Tensors on a GPU are copied to the CPU one at a time while writing.
pub fn write(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<u64, WeightsError> {
    let layout = plan(path, tensors)?;
    let header = header_json(&layout, metadata);
    let temp = temp_path(path);
    let result = write_file(path, &temp, &header, &layout);
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// One tensor as it will be written.
struct Planned<'a> {
    name: &'a str,
    tensor: &'a Tensor,
    dtype: &'static str,
    element: usize,
    shape: Vec<i64>,
    begin: u64,
    end: u64,
}

fn plan<'a>(
    path: &Path,
    tensors: &[(&'a str, &'a Tensor)],
) -> Result<Vec<Planned<'a>>, WeightsError> {
    let mut seen = HashSet::new();
    let mut planned = Vec::with_capacity(tensors.len());
    for &(name, tensor) in tensors {
        let unwritable = |problem: String| WeightsError::Unwritable {
            path: path.to_path_buf(),
            name: name.to_string(),
            problem,
        };
        if name == "__metadata__" {
            return Err(unwritable("the name is reserved for metadata".into()));
        }
        if !seen.insert(name) {
            return Err(unwritable("the name appears twice".into()));
        }
        let kind = tensor
            .f_kind()
            .map_err(|e| unwritable(format!("no dtype: {e}")))?;
        let dtype = dtype_name(kind)
            .ok_or_else(|| unwritable(format!("{kind:?} has no safetensors dtype")))?;
        let shape = tensor.size();
        let bytes = shape
            .iter()
            .try_fold(kind.elt_size_in_bytes() as u64, |acc, d| {
                acc.checked_mul(u64::try_from(*d).ok()?)
            })
            .ok_or_else(|| unwritable(format!("shape {shape:?} is too large")))?;
        planned.push(Planned {
            name,
            tensor,
            dtype,
            element: kind.elt_size_in_bytes(),
            shape,
            begin: 0,
            end: bytes,
        });
    }
    // Aligned sizes first, then by decreasing element size; stable, so the caller's order
    // holds within each group.
    planned.sort_by_key(|p| (p.end % ALIGNMENT != 0, std::cmp::Reverse(p.element)));
    let mut offset = 0u64;
    for p in &mut planned {
        let len = p.end;
        p.begin = offset;
        p.end = offset + len;
        offset = p.end;
    }
    Ok(planned)
}

/// The header's bytes, padded with spaces so that 8 + their length is a multiple of
/// [`ALIGNMENT`].
fn header_json(layout: &[Planned], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    for p in layout {
        map.insert(
            p.name.to_string(),
            serde_json::json!({
                "dtype": p.dtype,
                "shape": p.shape,
                "data_offsets": [p.begin, p.end],
            }),
        );
    }
    let mut json = serde_json::Value::Object(map).to_string().into_bytes();
    let unaligned = (8 + json.len()) % ALIGNMENT as usize;
    if unaligned != 0 {
        json.resize(json.len() + ALIGNMENT as usize - unaligned, b' ');
    }
    json
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn write_file(
    path: &Path,
    temp: &Path,
    header: &[u8],
    layout: &[Planned],
) -> Result<u64, WeightsError> {
    let file = File::create(temp).map_err(io(temp, "creating"))?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    let header_len = header.len() as u64;
    out.write_all(&header_len.to_le_bytes())
        .and_then(|()| out.write_all(header))
        .map_err(io(temp, "writing"))?;
    for p in layout {
        let torch = |action| {
            move |source| WeightsError::Torch {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        let cpu = p
            .tensor
            .f_to(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(torch("copying a tensor to the CPU"))?;
        let len = (p.end - p.begin) as usize;
        if len == 0 {
            continue;
        }
        // SAFETY: `cpu` is a contiguous CPU tensor of exactly `len` bytes (its shape and
        // dtype were measured in `plan`), alive and unmodified until the slice is dropped at
        // the end of this iteration.
        let bytes = unsafe { std::slice::from_raw_parts(cpu.data_ptr() as *const u8, len) };
        out.write_all(bytes).map_err(io(temp, "writing"))?;
    }
    let file = out.into_inner().map_err(|e| WeightsError::Io {
        path: temp.to_path_buf(),
        action: "writing",
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(temp, "syncing"))?;
    let written = file
        .metadata()
        .map_err(io(temp, "reading the size of"))?
        .len();
    drop(file);
    std::fs::rename(temp, path).map_err(io(path, "renaming the finished file to"))?;
    // The rename is durable only once the directory is synced too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir, "syncing the directory"))?;
    }
    Ok(written)
}

/// Maps an I/O error to [`WeightsError::Io`] for `path`.
pub(crate) fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> WeightsError {
    let path = path.to_path_buf();
    move |source| WeightsError::Io {
        path,
        action,
        source,
    }
}

/// The raw bytes a test needs to build a file by hand.
#[cfg(test)]
pub(crate) fn assemble(json: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// The header read from a file, checked to be what the same bytes in memory give (the
    /// weight pool's path): the same header, or an error that says the same.
    fn header_of(json: &str, data: &[u8]) -> Result<Header, WeightsError> {
        let bytes = assemble(json, data);
        let (_dir, path) = file_with(&bytes);
        both(&path, &bytes)
    }

    fn both(path: &Path, bytes: &[u8]) -> Result<Header, WeightsError> {
        let from_file = read_header(path);
        let from_memory = header_of_bytes(path, bytes);
        match (&from_file, &from_memory) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("file {from_file:?} but memory {from_memory:?}"),
        }
        from_file
    }

    #[test]
    fn the_writer_aligns_and_the_reader_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
        let b = Tensor::arange(3, (Kind::Int8, Device::Cpu));
        let c = Tensor::ones([32], (Kind::BFloat16, Device::Cpu));
        let d = Tensor::from(7i64);
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = write(
            &path,
            &[("a", &a), ("b", &b), ("c", &c), ("d", &d)],
            &metadata,
        )
        .unwrap();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        let header = read_header(&path).unwrap();
        assert_eq!(header.metadata, metadata);
        assert_eq!(header.data_start % ALIGNMENT, 0);
        assert_eq!(header.file_len, bytes);
        let names: Vec<_> = header.entries.iter().map(|e| e.name.as_str()).collect();
        // c (64 bytes, an aligned size) first, then by element size: d (8), a (4), b (1).
        assert_eq!(names, ["c", "d", "a", "b"]);
        let a_entry = &header.entries[2];
        assert_eq!(a_entry.kind, Kind::Float);
        assert_eq!(a_entry.shape, [2, 3]);
        assert_eq!(a_entry.byte_len(), 24);
        assert_eq!(header.entries[1].shape, Vec::<i64>::new());
        for entry in &header.entries {
            assert_eq!(entry.begin % entry.kind.elt_size_in_bytes() as u64, 0);
        }
        let last = header.entries.last().unwrap();
        assert_eq!(
            header.data_start + last.end,
            header.file_len,
            "back to back, no tail"
        );
        assert!(
            !dir.path()
                .read_dir()
                .unwrap()
                .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".tmp") })
        );
    }

    #[test]
    fn the_writer_refuses_duplicates_and_reserved_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let none = BTreeMap::new();
        assert!(matches!(
            write(&path, &[("x", &t), ("x", &t)], &none),
            Err(WeightsError::Unwritable { name, .. }) if name == "x"
        ));
        assert!(matches!(
            write(&path, &[("__metadata__", &t)], &none),
            Err(WeightsError::Unwritable { .. })
        ));
        let complex = Tensor::ones([2], (Kind::ComplexFloat, Device::Cpu));
        assert!(matches!(
            write(&path, &[("z", &complex)], &none),
            Err(WeightsError::Unwritable { .. })
        ));
        assert!(!path.exists());
    }

    #[test]
    fn a_hand_made_header_is_read_with_its_gap_and_padding() {
        let json = r#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]},"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"k":"v"}}   "#;
        let header = header_of(json, &[0; 8]).unwrap();
        assert_eq!(header.entries.len(), 2);
        assert_eq!(header.entries[0].name, "a");
        assert_eq!(header.entries[0].kind, Kind::Int16);
        assert_eq!(header.entries[1].begin, 6);
        assert_eq!(header.metadata["k"], "v");
        assert_eq!(header.data_start, 8 + json.len() as u64);
        assert_eq!(header.data_len(), 8);
    }

    #[test]
    fn a_short_file_or_a_header_length_past_the_end_is_refused() {
        let (_dir, path) = file_with(&[1, 2, 3]);
        assert!(matches!(
            both(&path, &[1, 2, 3]),
            Err(WeightsError::TooShort { len: 3, .. })
        ));
        let mut bytes = assemble("{}", &[]);
        bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
        let (_dir, path) = file_with(&bytes);
        let err = both(&path, &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                WeightsError::HeaderLength {
                    header_len: 1000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        let mut bytes = assemble("{}", &[]);
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let (_dir, path) = file_with(&bytes);
        assert!(matches!(
            both(&path, &bytes),
            Err(WeightsError::HeaderLength { .. })
        ));
    }

    #[test]
    fn bad_json_is_refused() {
        for json in [
            "{\"a\": ",
            "[1, 2]",
            "{} trailing",
            r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#,
        ] {
            let err = header_of(json, &[]).unwrap_err();
            assert!(
                matches!(err, WeightsError::HeaderJson { .. }),
                "{json}: {err}"
            );
        }
    }

    #[test]
    fn an_unknown_dtype_is_refused_by_name() {
        let err = header_of(
            r#"{"w":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[0,1]}}"#,
            &[0],
        )
        .unwrap_err();
        assert!(
            matches!(&err, WeightsError::UnknownDtype { name, dtype, .. } if name == "w" && dtype == "F8_E5M2"),
            "{err}"
        );
    }

    #[test]
    fn offsets_past_the_data_section_are_refused() {
        let err = header_of(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 8],
        )
        .unwrap_err();
        assert!(
            matches!(&err, WeightsError::OutOfRange { name, end: 12, data_len: 8, .. } if name == "w"),
            "{err}"
        );
    }

    #[test]
    fn a_shape_that_does_not_match_the_offsets_is_refused() {
        let err = header_of(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        )
        .unwrap_err();
        assert!(
            matches!(&err, WeightsError::SizeMismatch { name, expected: 12, actual: 8, .. } if name == "w"),
            "{err}"
        );
    }

    #[test]
    fn overlaps_and_malformed_entries_are_refused() {
        let overlap = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"c":{"dtype":"U8","shape":[2],"data_offsets":[5,7]}}"#;
        assert!(matches!(
            header_of(overlap, &[0; 8]),
            Err(WeightsError::Overlap { .. })
        ));
        let nested = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[0],"data_offsets":[3,3]}}"#;
        assert!(
            header_of(nested, &[0; 8]).is_ok(),
            "an empty tensor owns no bytes"
        );
        for json in [
            r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1]}}"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[2,1]}}"#,
            r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#,
            r#"{"a":3}"#,
        ] {
            let err = header_of(json, &[0; 8]).unwrap_err();
            assert!(
                matches!(err, WeightsError::BadEntry { .. }),
                "{json}: {err}"
            );
        }
        let err = header_of(r#"{"__metadata__":{"n":1}}"#, &[]).unwrap_err();
        assert!(matches!(err, WeightsError::BadMetadata { .. }), "{err}");
    }
}
