//! A component's code in three parts, `pre(inputs) -> (h, c)`, `block(h, c, i) -> h` and
//! `post(h, c, first_input)`, which `forward` composes: what lets a caller stand between two
//! blocks. Block streaming copies the next block's weights there ([`super::stream`]); a job
//! under a compute gate yields to a voice there ([`super::yielding`]).

use tch::{CModule, IValue, TchError, Tensor};

/// A part of the code failed.
#[derive(Debug, thiserror::Error)]
#[error("{method} failed: {source}")]
pub struct CallError {
    pub method: &'static str,
    pub source: TchError,
}

fn call(method: &'static str) -> impl Fn(TchError) -> CallError {
    move |source| CallError { method, source }
}

/// `pre(inputs)`: the hidden state and the conditioning every block reads.
pub fn pre(module: &CModule, inputs: &[Tensor]) -> Result<(Tensor, Tensor), CallError> {
    let ivalues: Vec<IValue> = inputs
        .iter()
        .map(|t| IValue::Tensor(t.shallow_clone()))
        .collect();
    match module.method_is("pre", &ivalues).map_err(call("pre"))? {
        IValue::Tuple(mut parts) if parts.len() == 2 => {
            let c = parts.pop();
            let h = parts.pop();
            match (h, c) {
                (Some(IValue::Tensor(h)), Some(IValue::Tensor(c))) => Ok((h, c)),
                _ => Err(bad_pre()),
            }
        }
        _ => Err(bad_pre()),
    }
}

/// `block(h, c, index)`.
pub fn block(module: &CModule, h: Tensor, c: &Tensor, index: usize) -> Result<Tensor, CallError> {
    match module
        .method_is(
            "block",
            &[
                IValue::Tensor(h),
                IValue::Tensor(c.shallow_clone()),
                IValue::Int(index as i64),
            ],
        )
        .map_err(call("block"))?
    {
        IValue::Tensor(h) => Ok(h),
        other => Err(CallError {
            method: "block",
            source: TchError::Kind(format!("returned {other:?}, not a tensor")),
        }),
    }
}

/// `post(h, c, first_input)`: the component's output.
pub fn post(
    module: &CModule,
    h: Tensor,
    c: Tensor,
    inputs: &[Tensor],
) -> Result<Tensor, CallError> {
    let first = inputs
        .first()
        .map(Tensor::shallow_clone)
        .ok_or_else(|| CallError {
            method: "post",
            source: TchError::Kind("no inputs".into()),
        })?;
    match module
        .method_is(
            "post",
            &[IValue::Tensor(h), IValue::Tensor(c), IValue::Tensor(first)],
        )
        .map_err(call("post"))?
    {
        IValue::Tensor(out) => Ok(out),
        other => Err(CallError {
            method: "post",
            source: TchError::Kind(format!("returned {other:?}, not a tensor")),
        }),
    }
}

fn bad_pre() -> CallError {
    CallError {
        method: "pre",
        source: TchError::Kind("must return a tuple (h, c) of two tensors".into()),
    }
}
