//! The tower layer in front of every service: resolves the caller's identity, asks the
//! server's policy whether it may call the method, applies its request rate, and puts the
//! [`Caller`] on the request for the handlers. Nothing reaches a handler without an
//! identity, except health checks and reflection, which change nothing and which probes
//! and grpcurl need before they can authenticate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Status;
use tonic::codegen::http;

use super::identity::{Transport, resolve};
use super::rate::{Rate, RateLimiter};
use super::{Identity, Tokens};

/// A server's rules: who may call what, and at what rate.
pub trait Authorize: Send + Sync + 'static {
    /// The caller the handlers of `method` (`/package.Service/Method`) will see, or the
    /// refusal (PERMISSION_DENIED naming the role that is missing).
    fn authorize(&self, identity: Identity, method: &str) -> Result<Caller, Status>;
}

/// Who is calling, as the handlers see it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Identity,
    /// May act on every lease and job, and see everyone's.
    pub operator: bool,
    /// The identity's request rate; None: unlimited.
    pub rate: Option<Rate>,
}

impl Caller {
    /// What owns the leases and jobs this caller makes: its identity's key.
    pub fn owner(&self) -> String {
        self.identity.key()
    }

    /// The caller the layer put on `request`. Refused as UNAUTHENTICATED if there is none,
    /// which only a service mounted without the layer would see.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("this call carries no identity"))
    }
}

/// Health and reflection: answered without an identity.
pub fn is_open(method: &str) -> bool {
    method.starts_with("/grpc.health.v1.Health/")
        || method.starts_with("/grpc.reflection.v1.ServerReflection/")
        || method.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// The layer; clone it into `Server::builder().layer(...)`.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<State>,
}

struct State {
    tokens: Tokens,
    policy: Arc<dyn Authorize>,
    limiter: RateLimiter,
}

impl AuthLayer {
    pub fn new(tokens: Tokens, policy: Arc<dyn Authorize>) -> AuthLayer {
        AuthLayer {
            state: Arc::new(State {
                tokens,
                policy,
                limiter: RateLimiter::default(),
            }),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<State>,
}

impl State {
    fn decide<B>(&self, request: &mut http::Request<B>) -> Result<(), Status> {
        let method = request.uri().path();
        let open = is_open(method);
        let transport = Transport::of(request.extensions());
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let identity = match resolve(&transport, authorization, &self.tokens) {
            Ok(identity) => identity,
            Err(_) if open => return Ok(()),
            Err(error) => return Err(Status::unauthenticated(error.to_string())),
        };
        if open {
            return Ok(());
        }
        let caller = self.policy.authorize(identity, method)?;
        if let Some(rate) = caller.rate
            && !self.limiter.admit(&caller.owner(), rate, Instant::now())
        {
            return Err(Status::resource_exhausted(format!(
                "request rate: {} may make {} requests a second (bursts of {}); slow down, or ask the operator to raise [quota] rate",
                caller.identity, rate.per_second, rate.burst
            )));
        }
        request.extensions_mut().insert(caller);
        Ok(())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.state.decide(&mut request) {
            Ok(()) => {
                // The service that was polled ready is the one that takes the call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
