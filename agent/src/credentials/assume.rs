//! STS AssumeRole for one run: the session's name and tags, the call made
//! with the instance role's credentials (the agent's SDK config), and the
//! credentials it returns, which never reach a log (their `Debug` hides the
//! secret parts).

use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;

/// Session tag keys, for the job role's policies (`aws:PrincipalTag/...`).
pub const TAG_REPOSITORY: &str = "Repository";
pub const TAG_RUN_ID: &str = "RunId";
/// STS's limits: `RoleSessionName` 2-64 of `[\w+=,.@-]`, tag values up to
/// 256 of letters, digits, spaces and `_.:/=+-@`.
const SESSION_NAME_MAX: usize = 64;
const TAG_VALUE_MAX: usize = 256;

/// What one session is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub role_arn: String,
    pub session_name: String,
    /// (key, value) session tags.
    pub tags: Vec<(&'static str, String)>,
    pub duration: Duration,
}

impl SessionRequest {
    /// The session of `run_id` on `instance_id`, for `repository`
    /// (`owner/repo`): named after the run (CloudTrail shows it in the
    /// assumed-role ARN) and the instance (several instances serve one run).
    pub fn for_run(
        role_arn: &str,
        duration: Duration,
        run_id: &str,
        instance_id: &str,
        repository: &str,
    ) -> SessionRequest {
        SessionRequest {
            role_arn: role_arn.to_owned(),
            session_name: session_name(run_id, instance_id),
            tags: vec![
                (TAG_REPOSITORY, tag_value(repository)),
                (TAG_RUN_ID, tag_value(run_id)),
            ],
            duration,
        }
    }
}

/// `run-<run id>-<instance id>`, each character STS refuses replaced by
/// `-`, cut to 64 characters. The run id comes from the table, which a
/// control plane writes: it is not trusted to be well formed.
pub fn session_name(run_id: &str, instance_id: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    format!("run-{run_id}-{instance_id}")
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(SESSION_NAME_MAX)
        .collect()
}

/// A tag value STS accepts: unsupported characters replaced by `-`.
pub fn tag_value(text: &str) -> String {
    let allowed = |c: char| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c);
    text.chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(TAG_VALUE_MAX)
        .collect()
}

/// Temporary credentials of one session.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: OffsetDateTime,
    /// The assumed-role ARN (for the log: the session's name is in it).
    pub arn: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AssumeError {
    /// STS refused or could not be reached (the SDK's error, one line).
    #[error("AssumeRole {role_arn}: {reason}")]
    Call { role_arn: String, reason: String },
    /// STS answered without what a session needs.
    #[error("AssumeRole {role_arn}: the answer has no {missing}")]
    Incomplete {
        role_arn: String,
        missing: &'static str,
    },
}

/// Who assumes the role: STS, or a fake in the tests.
pub trait Assume: Send + Sync + 'static {
    fn assume(
        &self,
        request: &SessionRequest,
    ) -> impl Future<Output = Result<Issued, AssumeError>> + Send;
}

/// AssumeRole through the agent's SDK config (the instance role).
#[derive(Clone)]
pub struct Sts(pub aws_sdk_sts::Client);

impl Assume for Sts {
    async fn assume(&self, request: &SessionRequest) -> Result<Issued, AssumeError> {
        let role_arn = request.role_arn.clone();
        let mut call = self
            .0
            .assume_role()
            .role_arn(&request.role_arn)
            .role_session_name(&request.session_name)
            .duration_seconds(i32::try_from(request.duration.as_secs()).unwrap_or(i32::MAX));
        for (key, value) in &request.tags {
            let tag = aws_sdk_sts::types::Tag::builder()
                .key(*key)
                .value(value)
                .build()
                .map_err(|e| AssumeError::Call {
                    role_arn: role_arn.clone(),
                    reason: e.to_string(),
                })?;
            call = call.tags(tag);
        }
        let output = call.send().await.map_err(|e| AssumeError::Call {
            role_arn: role_arn.clone(),
            reason: crate::sdk_error::describe(&e),
        })?;
        let incomplete = |missing| AssumeError::Incomplete {
            role_arn: role_arn.clone(),
            missing,
        };
        let credentials = output
            .credentials()
            .ok_or_else(|| incomplete("Credentials"))?;
        let expiration = OffsetDateTime::from_unix_timestamp(credentials.expiration().secs())
            .map_err(|_| incomplete("valid Expiration"))?;
        Ok(Issued {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: credentials.secret_access_key().to_owned(),
            session_token: credentials.session_token().to_owned(),
            expiration,
            arn: output
                .assumed_role_user()
                .map(|u| u.arn().to_owned())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_keep_to_what_sts_accepts() {
        assert_eq!(
            session_name("12345678901", "i-0123456789abcdef0"),
            "run-12345678901-i-0123456789abcdef0"
        );
        // Anything outside [\w+=,.@-] becomes '-'; non-ASCII letters too
        // (STS's \w is ASCII).
        assert_eq!(session_name("a b/c:d'é", "i-1"), "run-a-b-c-d---i-1");
        let long = session_name(&"9".repeat(100), "i-0123456789abcdef0");
        assert_eq!(long.len(), 64);
        assert!(long.starts_with("run-999"));
        for name in [long, session_name("", "")] {
            assert!((2..=64).contains(&name.len()), "{name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)));
        }
    }

    #[test]
    fn tags_name_the_repository_and_the_run() {
        let r = SessionRequest::for_run(
            "arn:aws:iam::123456789012:role/ci",
            Duration::from_secs(900),
            "777\n*",
            "i-1",
            "acme/widgets",
        );
        assert_eq!(
            r.tags,
            vec![
                (TAG_REPOSITORY, "acme/widgets".to_owned()),
                (TAG_RUN_ID, "777--".to_owned())
            ]
        );
        assert_eq!(r.session_name, "run-777---i-1");
        assert_eq!(tag_value(&"x".repeat(300)).len(), 256);
    }

    #[test]
    fn debug_hides_the_secret_parts() {
        let issued = Issued {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            session_token: "session-token".into(),
            expiration: OffsetDateTime::UNIX_EPOCH,
            arn: "arn".into(),
        };
        let text = format!("{issued:?}");
        assert!(text.contains("ASIAEXAMPLE"), "{text}");
        assert!(!text.contains("very-secret") && !text.contains("session-token"));
    }
}
