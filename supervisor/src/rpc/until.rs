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

/// A stream that ends right after the first item for which `last` is true (a job's final
/// state), without waiting for another item to find out.
pub struct Through<S, F> {
    stream: Pin<Box<S>>,
    last: F,
    done: bool,
}

impl<S, F> Through<S, F> {
    pub fn new(stream: S, last: F) -> Through<S, F> {
        Through {
            stream: Box::pin(stream),
            last,
            done: false,
        }
    }
}

impl<S: Stream, F: FnMut(&S::Item) -> bool + Unpin> Stream for Through<S, F> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(self.stream.as_mut().poll_next(cx));
        if let Some(item) = &item
            && (self.last)(item)
        {
            self.done = true;
        }
        Poll::Ready(item)
    }
}
