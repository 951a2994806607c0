//! Idle → registering → serving: waiting for a claim, and registering the
//! runner for it.

use super::release::remove_locally;
use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use crate::protocol::{judge_expiry, Expiry, RegistrationToken, Signal, TokenProblem};
use crate::state::{Phase, Registration};
use std::time::Duration;
use tokio::time::Instant;

/// config.sh attempts per token before `UD_REG_FAILED`: GitHub API blips
/// are common, and the control plane fails the instance on the signal.
const CONFIGURE_ATTEMPTS: u32 = 3;
const CONFIGURE_RETRY: Duration = Duration::from_secs(1);

/// How a registration attempt ended, short of an interruption.
enum Attempt {
    Registered(Registration),
    Failed(String),
}

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Idle: polls the instance record (eventually consistent, cheap) until
    /// it names a run, then confirms the claim with a strongly consistent
    /// read that also fetches the token. The confirming read, not a time
    /// window, tells a lagging read of the run just released from a real
    /// claim: the control plane's run id is the workflow run's, so the run
    /// just released may claim this instance again at once.
    pub(super) async fn wait_for_claim(&mut self) -> Result<Phase, Interrupt> {
        let mut warned_missing = false;
        // Agents booted together start polling at different phases.
        let phase = self.pace.phase(self.setup.timing.idle_poll);
        self.setup.events.sleep(phase).await?;
        self.orphans.idle(Instant::now());
        loop {
            self.upgrade_if_due().await?;
            let read = self.world.pool.read_instance(false).await;
            self.judge_orphan(&read).await?;
            match read {
                Ok(record) => {
                    self.observe(&record);
                    if record.is_none() && !warned_missing {
                        tracing::warn!("no instance record in the table yet; waiting");
                        warned_missing = true;
                    }
                    if let Some(run_id) = record.and_then(|r| r.run_id) {
                        if !self.recently_declined(&run_id) {
                            if let Some(phase) = self.confirm_claim(run_id).await {
                                return Ok(phase);
                            }
                        }
                    }
                }
                Err(e) => self.read_failed("polling the instance record", &e),
            }
            self.pause(self.setup.timing.idle_poll).await?;
        }
    }

    /// A claim declined (expired) is confirmed again only once per claimed
    /// poll: the record stays so until the control plane acts.
    fn recently_declined(&self, run_id: &str) -> bool {
        self.declined
            .as_ref()
            .is_some_and(|(r, at)| r == run_id && at.elapsed() < self.setup.timing.claimed_poll)
    }

    async fn confirm_claim(&mut self, run_id: String) -> Option<Phase> {
        let seen = Instant::now();
        match self.world.pool.read_claim_and_token().await {
            Ok((record, token)) => {
                self.observe(&record);
                let record = record.filter(|r| r.run_id.as_ref() == Some(&run_id))?;
                let now = self.world.clock.now_utc();
                if let Expiry::Expired { threshold } =
                    judge_expiry(record.threshold.as_deref(), now, Duration::ZERO)
                {
                    // Expired with the claim left in place (a stale
                    // heartbeat): the instance is about to be terminated,
                    // and a runner must not take a job now.
                    if self.declined.as_ref().is_none_or(|(r, _)| r != &run_id) {
                        tracing::warn!(run_id = %run_id, threshold = %crate::protocol::format_timestamp(threshold), "claim already expired; not registering until the control plane renews it");
                    }
                    self.declined = Some((run_id, Instant::now()));
                    return None;
                }
                // `confirm_ms`: from the idle read that saw the run id to
                // here (the confirming read), for the claim's breakdown.
                tracing::info!(run_id = %run_id, confirm_ms = seen.elapsed().as_secs_f64() * 1000.0, "claimed");
                self.declined = None;
                self.claimed_at = Some(seen);
                self.claim_token = token;
                return Some(Phase::Registering {
                    run_id,
                    runner_name: None,
                });
            }
            Err(e) => self.read_failed("confirming a claim", &e),
        }
        None
    }

    /// Registers the runner for `run_id`. A refused token or a failed
    /// registration signals `UD_REG_FAILED` once per token, then waits for
    /// a fresh token or the release.
    pub(super) async fn register(&mut self, run_id: &str) -> Result<Phase, Interrupt> {
        let mut token = self.claim_token.take();
        let mut failed_for: Option<Option<RegistrationToken>> = None;
        loop {
            match self.attempt(run_id, token.as_ref()).await? {
                Attempt::Registered(registration) => {
                    self.signal(Signal::RegOk, run_id).await?;
                    let since_claim = self.claimed_at.take().map(|at| at.elapsed());
                    self.setup.metrics.registered(since_claim);
                    return Ok(Phase::Serving { registration });
                }
                Attempt::Failed(why) => {
                    tracing::error!(run_id, reason = %why, "registration failed");
                    self.setup.metrics.registration_failed();
                    if failed_for.as_ref() != Some(&token) {
                        self.signal(Signal::RegFailed, run_id).await?;
                        failed_for = Some(token.clone());
                    }
                }
            }
            match self.wait_for_fresh_token(run_id, &token).await? {
                Some(fresh) => token = fresh,
                None => {
                    tracing::info!(run_id, "released before registration succeeded");
                    return Ok(Phase::Idle);
                }
            }
        }
    }

    async fn attempt(
        &mut self,
        run_id: &str,
        token: Option<&RegistrationToken>,
    ) -> Result<Attempt, Interrupt> {
        if let Some(why) = self.refusal() {
            return Ok(Attempt::Failed(why));
        }
        let Some(token) = token else {
            return Ok(Attempt::Failed(TokenProblem::Missing.to_string()));
        };
        if let Err(problem) = token.usable_at(self.world.clock.now_utc()) {
            return Ok(Attempt::Failed(problem.to_string()));
        }
        self.configure(run_id, &token.token).await
    }

    /// Waits, one read per claimed poll, until the control plane publishes
    /// a token other than `token` (`Some`) or releases the run (`None`).
    async fn wait_for_fresh_token(
        &mut self,
        run_id: &str,
        token: &Option<RegistrationToken>,
    ) -> Result<Option<Option<RegistrationToken>>, Interrupt> {
        loop {
            self.pause(self.setup.timing.claimed_poll).await?;
            let ready_again = self.upgrade_if_due().await?;
            match self.world.pool.read_claim_and_token().await {
                Ok((record, fresh)) => {
                    self.observe(&record);
                    if record.and_then(|r| r.run_id).as_deref() != Some(run_id) {
                        return Ok(None);
                    }
                    if (ready_again || &fresh != token) && self.refusal().is_none() {
                        return Ok(Some(fresh));
                    }
                }
                Err(e) => self.read_failed("waiting for a fresh registration token", &e),
            }
        }
    }

    /// `config.sh` for one registration, retried on failure. A failure
    /// leaves no registration files behind, so the next try can work.
    async fn configure(&mut self, run_id: &str, token: &str) -> Result<Attempt, Interrupt> {
        let host = &self.world.host;
        if host.is_configured() {
            // Never two registrations: drop a leftover before adding one.
            remove_locally(host, "a registration left over before config.sh").await;
        }
        self.state.registration_counter += 1;
        let name = format!(
            "{}-{}",
            self.setup.instance_id, self.state.registration_counter
        );
        // Persisted before config.sh runs: a crash from here on leaves a
        // registration the next start must clean up.
        self.enter(Phase::Registering {
            run_id: run_id.to_owned(),
            runner_name: Some(name.clone()),
        });
        let events = self.setup.events.clone();
        let host = &self.world.host;
        let started = Instant::now();
        let mut attempt = 1;
        let result = loop {
            match events.guard(host.configure(token, &name, run_id)).await? {
                Err(e) if attempt < CONFIGURE_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "config.sh failed; retrying");
                    remove_locally(host, "config.sh failed; retrying").await;
                    events.sleep(CONFIGURE_RETRY * attempt).await?;
                    attempt += 1;
                }
                other => break other,
            }
        };
        tracing::info!(runner = %name, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "config.sh finished");
        match result {
            Ok(()) => Ok(Attempt::Registered(Registration {
                run_id: run_id.to_owned(),
                runner_name: name,
                runner_pgid: None,
            })),
            Err(e) => {
                remove_locally(host, "config.sh failed on every attempt").await;
                self.enter(Phase::Registering {
                    run_id: run_id.to_owned(),
                    runner_name: None,
                });
                Ok(Attempt::Failed(e.to_string()))
            }
        }
    }
}
