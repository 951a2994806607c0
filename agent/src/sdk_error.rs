//! An AWS SDK error as one line an operator can read. For a service error
//! (the service answered and refused) that is the error code and the
//! service's message, from the SDK's error metadata; `DisplayErrorContext`
//! would add the whole raw response (headers, body, extensions), about
//! 2 KB a line. For no answer (connection, timeout, a cut-off body) the
//! source chain is what says why, and it is kept whole.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::fmt::Debug;

/// The readable line; the full error goes to the debug log.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: Debug,
{
    tracing::debug!(error = %DisplayErrorContext(err), "AWS SDK error in full");
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("unknown error code");
            match e.message() {
                Some(message) => format!("{code}: {message}"),
                None => code.to_owned(),
            }
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_sdk_dynamodb::types::error::ResourceNotFoundException;
    use aws_smithy_types::body::SdkBody;

    /// What DynamoDB answers a GetItem on a deleted table: a 400 whose
    /// `__type` names the exception (the shape moto and DynamoDB send).
    fn table_gone() -> SdkError<GetItemError, HttpResponse> {
        let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"Requested resource not found"}"#;
        let mut raw = HttpResponse::new(400.try_into().unwrap(), SdkBody::from(body));
        for (name, value) in [
            (
                "x-amzn-requestid",
                "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123",
            ),
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-crc32", "1234567890"),
        ] {
            raw.headers_mut().insert(name, value);
        }
        let meta = ErrorMetadata::builder()
            .code("ResourceNotFoundException")
            .message("Requested resource not found")
            .build();
        let err = ResourceNotFoundException::builder()
            .message("Requested resource not found")
            .meta(meta)
            .build();
        SdkError::service_error(GetItemError::ResourceNotFoundException(err), raw)
    }

    #[test]
    fn a_service_error_is_its_code_and_message() {
        let err = table_gone();
        let line = describe(&err);
        assert_eq!(
            line,
            "ResourceNotFoundException: Requested resource not found"
        );
        // What it replaces: the raw response, headers and all.
        let full = DisplayErrorContext(&err).to_string();
        assert!(full.len() > line.len() * 3, "{full}");
    }

    #[test]
    fn no_answer_keeps_the_source_chain() {
        let err: SdkError<GetItemError, HttpResponse> =
            SdkError::timeout_error(std::io::Error::other("read timed out after 5s"));
        assert!(
            describe(&err).contains("read timed out after 5s"),
            "{}",
            describe(&err)
        );
    }
}
