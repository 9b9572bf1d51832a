//! The codec every generated service and client uses: prost's, except that a message that
//! does not decode is the caller's mistake.
//!
//! tonic's prost codec answers undecodable bytes with INTERNAL, which tells a caller that
//! sent garbage that the server broke and that retrying might help. Our servers only ever
//! decode what a caller sent, so the same failure is INVALID_ARGUMENT here, naming the
//! message that was expected. (The generated clients share this codec; a reply that does
//! not decode would also read INVALID_ARGUMENT, and says so in its message.)

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// `tonic_prost::ProstCodec` with decode failures as INVALID_ARGUMENT (named in build.rs).
pub struct StrictCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _type: PhantomData }
    }
}

/// Decodes a `U`, refusing bytes that are not one as INVALID_ARGUMENT.
pub struct StrictDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {error}; send a {} encoded as protobuf",
                short_name::<U>(),
                short_name::<U>()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// `arbiter::pb::supervisor::v1::LeaseRequest` -> `LeaseRequest`: the name a caller knows.
fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_name_is_the_message_name() {
        assert_eq!(
            short_name::<crate::pb::supervisor::v1::LeaseRequest>(),
            "LeaseRequest"
        );
    }
}
