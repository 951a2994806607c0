//! A throttled or failing table: the machine reads at least 4× less while
//! it lasts, is back at the normal rate within 10 s after, and still writes
//! every signal the control plane waits for.

use super::*;
use tokio::time::Instant;

fn reads_between(h: &Harness, from: Instant, to: Instant) -> usize {
    h.pool
        .read_times()
        .iter()
        .filter(|t| **t >= from && **t < to)
        .count()
}

#[tokio::test(start_paused = true)]
async fn idle_reads_drop_at_least_4x_while_throttled_and_recover_within_10s() {
    let h = Harness::started_and_idle().await;
    let start = Instant::now();
    h.idle_for(Duration::from_secs(30)).await;
    let normal = reads_between(&h, start, Instant::now());

    h.pool.fail_reads(true);
    // The first 10 s of the episode included: the drop is at once.
    let throttled_from = Instant::now();
    h.idle_for(Duration::from_secs(30)).await;
    let throttled = reads_between(&h, throttled_from, Instant::now());

    h.pool.fail_reads(false);
    let ended = Instant::now();
    h.idle_for(Duration::from_secs(10)).await;
    let recovered_from = Instant::now();
    h.idle_for(Duration::from_secs(30)).await;
    let after = reads_between(&h, recovered_from, Instant::now());

    assert!((115..=125).contains(&normal), "{normal} reads in 30 s idle");
    assert!(
        throttled * 4 <= normal,
        "{throttled} reads in 30 s throttled vs {normal} normal"
    );
    // 16× at most: not a halt.
    assert!(throttled >= 5, "{throttled} reads in 30 s throttled");
    assert!(
        after + 3 >= normal,
        "{after} reads in the 30 s from 10 s after the episode vs {normal}"
    );
    assert!(
        reads_between(&h, ended, recovered_from) >= 5,
        "reads resume before 10 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_at_the_end_of_an_episode_is_answered_within_10s() {
    let h = Harness::started_and_idle().await;
    h.pool.fail_reads(true);
    h.idle_for(Duration::from_secs(60)).await;
    h.pool.claim("2000");
    h.pool.fail_reads(false);
    let ended = Instant::now();
    h.wait_signal(Signal::RegOk, "2000").await;
    assert!(
        ended.elapsed() < Duration::from_secs(10),
        "answered {:?} after the episode",
        ended.elapsed()
    );
}

/// Reads fail and three writes in four are refused throughout a release:
/// the release's signal is retried until stored, once, and the next claim
/// is registered.
#[tokio::test(start_paused = true)]
async fn signals_are_written_through_a_throttled_release() {
    let h = Harness::started_and_serving().await;
    h.pool.refuse_writes_except_every(4);
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.pool.fail_reads(true);
    h.idle_for(Duration::from_secs(20)).await;
    h.pool.claim("2000");
    h.pool.fail_reads(false);
    h.wait_signal(Signal::RegOk, "2000").await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    assert_eq!(h.pool.count(Signal::RegOk, "2000"), 1);
}

/// A job's reads are paced too, and a release during the episode is still
/// seen and answered once reads work.
#[tokio::test(start_paused = true)]
async fn a_release_during_an_episode_is_answered_when_reads_work_again() {
    let h = Harness::started_and_serving().await;
    h.pool.fail_reads(true);
    h.idle_for(Duration::from_secs(30)).await;
    h.pool.release();
    h.idle_for(Duration::from_secs(30)).await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 0);
    h.pool.fail_reads(false);
    let ended = Instant::now();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert!(ended.elapsed() < Duration::from_secs(10));
}
