//! What can go wrong reading, writing, loading or prewarming weight files. Every variant
//! names the file (and the tensor where there is one), because a model is many files and
//! "size mismatch" alone sends an operator looking through all of them.

use std::path::PathBuf;

use crate::stream::StreamError;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: {len} bytes is too short for a safetensors file (8-byte header length first)")]
    TooShort { path: PathBuf, len: u64 },
    #[error(
        "{path}: header length {header_len} does not fit (file is {file_len} bytes, at most {max} bytes of header accepted): not a safetensors file, or truncated"
    )]
    HeaderLength {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
        max: u64,
    },
    #[error("{path}: the header is not valid JSON: {message}")]
    HeaderJson { path: PathBuf, message: String },
    #[error("{path}: tensor {name:?}: {problem}")]
    BadEntry {
        path: PathBuf,
        name: String,
        problem: String,
    },
    #[error(
        "{path}: tensor {name:?} has dtype {dtype:?}; known: BF16 F16 F32 F64 I64 I32 I16 I8 U8 BOOL"
    )]
    UnknownDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error(
        "{path}: tensor {name:?}: shape and dtype make {expected} bytes but data_offsets span {actual}"
    )]
    SizeMismatch {
        path: PathBuf,
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{path}: tensor {name:?}: data_offsets [{begin}, {end}) lie outside the {data_len}-byte data section"
    )]
    OutOfRange {
        path: PathBuf,
        name: String,
        begin: u64,
        end: u64,
        data_len: u64,
    },
    #[error("{path}: tensors {first:?} and {second:?} overlap")]
    Overlap {
        path: PathBuf,
        first: String,
        second: String,
    },
    #[error("{path}: __metadata__ must map strings to strings: {problem}")]
    BadMetadata { path: PathBuf, problem: String },
    #[error("{path}: tensor {name:?} cannot be written: {problem}")]
    Unwritable {
        path: PathBuf,
        name: String,
        problem: String,
    },
    #[error("{path}: libtorch failed while {action}: {source}")]
    Torch {
        path: PathBuf,
        action: &'static str,
        source: tch::TchError,
    },
    #[error("{path}: {source}")]
    Stream { path: PathBuf, source: StreamError },
    #[error("pinned staging buffers on {device:?}: {source}")]
    StagingStream {
        device: tch::Device,
        source: StreamError,
    },
    #[error("invalid load options: {0}")]
    Options(String),
    #[error("{path}: a reader thread died: {message}")]
    Reader { path: PathBuf, message: String },
}
