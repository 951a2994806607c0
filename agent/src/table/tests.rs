use super::*;

#[test]
fn instance_record_parsing_tolerates_bad_types() {
    let item: Item = HashMap::from([
        ("runId".into(), AttributeValue::S("".into())),
        ("threshold".into(), AttributeValue::N("5".into())),
        ("state".into(), AttributeValue::S("idle".into())),
    ]);
    let rec = parse_instance(&item);
    assert_eq!(rec.run_id, None);
    assert_eq!(rec.threshold, None);
    assert_eq!(rec.state.as_deref(), Some("idle"));

    let item: Item = HashMap::from([("runId".into(), AttributeValue::S("123-1".into()))]);
    assert_eq!(parse_instance(&item).run_id.as_deref(), Some("123-1"));
}

#[test]
fn errors_are_classified_by_code_then_status() {
    let throttled = ErrorKind::classify(Some("ProvisionedThroughputExceededException"), Some(400));
    assert_eq!(throttled, ErrorKind::Throttled);
    assert_eq!(
        ErrorKind::classify(Some("ThrottlingException"), Some(400)),
        ErrorKind::Throttled
    );
    assert_eq!(
        ErrorKind::classify(Some("RequestLimitExceeded"), Some(503)),
        ErrorKind::Throttled
    );
    assert_eq!(ErrorKind::classify(None, Some(429)), ErrorKind::Throttled);
    assert_eq!(
        ErrorKind::classify(Some("InternalServerError"), Some(500)),
        ErrorKind::Server
    );
    assert_eq!(ErrorKind::classify(None, Some(503)), ErrorKind::Server);
    assert_eq!(
        ErrorKind::classify(Some("AccessDeniedException"), Some(400)),
        ErrorKind::Refused
    );
    assert_eq!(ErrorKind::classify(None, None), ErrorKind::Unreachable);
    assert_eq!(
        ErrorKind::classify(Some("ResourceNotFoundException"), Some(400)),
        ErrorKind::TableMissing
    );
    // Only DynamoDB's own answer counts: without a response (a code
    // the SDK made up) or with a 5xx it says nothing about the table.
    assert_eq!(
        ErrorKind::classify(Some("ResourceNotFoundException"), None),
        ErrorKind::Unreachable
    );
    assert_eq!(
        ErrorKind::classify(Some("ResourceNotFoundException"), Some(500)),
        ErrorKind::Server
    );
}

/// The largest heartbeat stays one write unit (1 KiB).
#[test]
fn a_heartbeat_with_every_attribute_at_its_longest_is_under_1_kib() {
    let long = crate::status::shorten(&"é".repeat(1000));
    let status = Status {
        state: "deregistering".into(),
        run_id: Some(crate::status::shorten(&"9".repeat(1000))),
        job_active: true,
        runner_version: Some("2.399.999".into()),
        last_reset: Some(long.clone()),
        last_check: Some("fail at 2026-11-28T16:00:00Z: scheduled jobs".into()),
        orphaned: Some(crate::orphan::Orphan::RecordGone),
    };
    let mut item = Table::key(PK_HEARTBEAT, &instance_sk("i-0123456789abcdef0"));
    item.extend(status_attributes(&status, Some(u64::MAX)));
    for (name, value) in [
        ("entityType", ENTITY_HEARTBEAT),
        ("identifier", "i-0123456789abcdef0"),
        ("updatedAt", "2026-11-28T16:00:00.000Z"),
        ("value", HEARTBEAT_VALUE),
    ] {
        item.insert(name.into(), AttributeValue::S(value.into()));
    }
    // DynamoDB's item size: attribute names plus values (UTF-8 bytes,
    // numbers about one byte per two digits, booleans one byte).
    let size: usize = item
        .iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::N(n) => n.len().div_ceil(2) + 1,
                    _ => 1,
                }
        })
        .sum();
    assert!(size < 1024, "{size} bytes");
    assert_eq!(item.len(), 15);
}

#[test]
fn token_parsing() {
    let value = HashMap::from([
        ("token".to_owned(), AttributeValue::S("AAA".into())),
        (
            "expires_at".to_owned(),
            AttributeValue::S("2025-01-01T00:00:00.000Z".into()),
        ),
    ]);
    let item: Item = HashMap::from([("value".into(), AttributeValue::M(value))]);
    let token = parse_token(&item).unwrap();
    assert_eq!(token.token, "AAA");
    assert!(parse_token(&HashMap::new()).is_none());
}
