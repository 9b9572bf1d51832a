//! A stream that ends when a cancellation token fires, so graceful shutdown is not held
//! up by watchers whose streams would otherwise never end.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub struct Until<S> {
    stream: Pin<Box<S>>,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Until<S> {
    pub fn new(stream: S, token: CancellationToken) -> Until<S> {
        Until {
            stream: Box::pin(stream),
            stop: Box::pin(token.cancelled_owned()),
        }
    }
}

impl<S: Stream> Stream for Until<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.stream.as_mut().poll_next(cx)
    }
}
