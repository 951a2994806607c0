//! Per-run AWS credentials for jobs (`[job_credentials]`): for each claimed
//! run the agent assumes the configured role with the instance role
//! (`assume.rs`), keeps the session fresh (`session.rs`) and serves it on
//! a loopback endpoint (`server.rs`) that the AWS SDKs and CLI read through
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`, both given to the runner's
//! environment. Each run gets a new random token; at the run's end it stops
//! working at once. Tokens and credentials live in memory only: never
//! logged, never in `state.json`, never in the metrics.

pub mod assume;
mod server;
mod session;

#[cfg(test)]
mod tests;

use assume::SessionRequest;
pub use assume::{Assume, Sts};
use runner_agent_common::config::JobCredentialsSettings;
use session::Session;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const ENV_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
pub const ENV_TOKEN: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
/// Credential sources the SDKs try before the container endpoint (or in
/// its place): left out of the runner's environment, so that jobs use the
/// run's session and never credentials the agent was started with.
pub const SHADOWING_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// The runs' sessions and the endpoint's address; clones share them.
pub struct JobCredentials<A: Assume = Sts> {
    inner: Arc<Inner<A>>,
}

impl<A: Assume> Clone for JobCredentials<A> {
    fn clone(&self) -> Self {
        JobCredentials {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<A> {
    assumer: Arc<A>,
    settings: JobCredentialsSettings,
    instance_id: String,
    /// `owner/repo`, for the session's `Repository` tag.
    repository: String,
    /// What jobs are given as `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    uri: String,
    metrics: crate::metrics::Metrics,
    /// The run being served, if any.
    current: Mutex<Option<Arc<Session>>>,
}

/// What the runner's environment is to change for job credentials.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunEnv {
    pub set: Vec<(&'static str, String)>,
    pub remove: &'static [&'static str],
}

impl<A: Assume> JobCredentials<A> {
    /// Binds the endpoint; the returned future serves it until `stop`.
    pub async fn start(
        settings: JobCredentialsSettings,
        assumer: A,
        instance_id: &str,
        repository: &str,
        metrics: crate::metrics::Metrics,
        stop: CancellationToken,
    ) -> std::io::Result<(JobCredentials<A>, impl std::future::Future<Output = ()>)> {
        let listener = TcpListener::bind(settings.listen).await?;
        let address = listener.local_addr()?;
        let credentials = JobCredentials {
            inner: Arc::new(Inner {
                assumer: Arc::new(assumer),
                uri: uri(address),
                settings,
                instance_id: instance_id.to_owned(),
                repository: repository.to_owned(),
                metrics,
                current: Mutex::new(None),
            }),
        };
        tracing::info!(uri = %credentials.inner.uri, role_arn = %credentials.inner.settings.role_arn, "serving job credentials");
        let serve = server::serve(listener, credentials.clone(), stop);
        Ok((credentials, serve))
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Arc<Session>>> {
        self.inner.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `run_id` holds the instance: a session for it, unless it has one.
    /// Returns at once; the role is assumed in the background.
    pub fn begin(&self, run_id: &str) {
        let mut current = self.current();
        if current.as_ref().is_some_and(|s| s.run_id == run_id) {
            return;
        }
        if let Some(old) = current.take() {
            old.end();
        }
        let inner = &self.inner;
        let request = SessionRequest::for_run(
            &inner.settings.role_arn,
            inner.settings.duration,
            run_id,
            &inner.instance_id,
            &inner.repository,
        );
        let session_name = request.session_name.clone();
        match Session::start(
            inner.assumer.clone(),
            run_id,
            request,
            inner.metrics.clone(),
        ) {
            Ok(session) => {
                tracing::info!(run_id, session_name = %session_name, "job credentials: new session");
                *current = Some(Arc::new(session));
            }
            Err(e) => {
                // Jobs then find no credentials in their environment.
                inner.metrics.assume_role(false);
                tracing::error!(run_id, error = %e, "job credentials: no token for the run");
            }
        }
    }

    /// The run is over: its token gets 403 from now on.
    pub fn end(&self) {
        if let Some(session) = self.current().take() {
            session.end();
            tracing::info!(run_id = %session.run_id, session_name = %session.session_name, "job credentials: session ended");
        }
    }

    /// The runner's environment for the current run.
    pub fn run_env(&self) -> RunEnv {
        let set = match self.current().as_ref() {
            Some(session) => vec![
                (ENV_FULL_URI, self.inner.uri.clone()),
                (ENV_TOKEN, session.token().to_owned()),
            ],
            None => Vec::new(),
        };
        RunEnv {
            set,
            remove: SHADOWING_ENV,
        }
    }

    /// The current run's session if `token` is its token.
    fn session_for(&self, token: &str) -> Option<Arc<Session>> {
        self.current()
            .as_ref()
            .filter(|s| s.accepts(token))
            .cloned()
    }
}

/// The URI jobs are given (IPv6 in brackets).
fn uri(address: SocketAddr) -> String {
    format!("http://{address}{}", server::PATH)
}
