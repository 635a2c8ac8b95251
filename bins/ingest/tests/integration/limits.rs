//! The per-token rate limit over HTTP: a flood from one token gets `429
//! rate_limited` with `Retry-After` while another token is still served; a
//! refused report leaves no row and no counter; the allowance refills.

use std::time::Duration;

use election_ingest::limit::RateLimit;

use crate::harness::{Ingest, RedisChoice, issue_token, settings};

fn report(ballot_box: &str, votes: u32) -> String {
    format!(r#"{{"ballot_box_id":"{ballot_box}","city":"york","votes":{{"a":{votes}}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_token_gets_429_while_another_token_is_served() {
    let mut settings = settings();
    settings.rate_limit = Some(RateLimit {
        per_second: 1.0,
        burst: 3,
    });
    let ingest = Ingest::start_with(RedisChoice::Standalone, settings).await;
    let (_, other) = issue_token(&ingest.pool, ingest.election.as_str(), None);

    // 12 posts at once from one token: the burst (3) goes through, perhaps
    // one more if a second passes meanwhile; the rest are refused.
    let mut posts = Vec::new();
    for i in 0..12 {
        let client = ingest.client.clone();
        let url = ingest.reports_url();
        let token = ingest.token.clone();
        posts.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(report(&format!("F{i}"), 1))
                .send()
                .await
                .unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body)
        }));
    }
    // Another token is served meanwhile.
    let (status, answer) = ingest.post_with(&other, &report("OTHER", 10)).await;
    assert_eq!(status, 201, "{answer}");

    let mut accepted = 0;
    let mut limited = 0;
    for post in posts {
        let (status, retry_after, body) = post.await.unwrap();
        match status {
            201 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(body["error"], "rate_limited", "{body}");
                let message = body["message"].as_str().unwrap();
                assert!(
                    message.contains("1 reports per second (bursts of 3)")
                        && message.contains("nothing was recorded"),
                    "{message}"
                );
                let seconds: u64 = retry_after
                    .expect("a 429 carries Retry-After")
                    .parse()
                    .unwrap();
                assert_eq!(seconds, 1, "at 1 report/s the next one is at most 1 s away");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!((3..=4).contains(&accepted), "{accepted} accepted");
    assert_eq!(accepted + limited, 12);

    // Only accepted reports left rows and moved counters.
    assert_eq!(ingest.rows(), (accepted + 1, accepted + 1));
    assert_eq!(ingest.national("a"), Some(accepted + 10));
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"ingest_responses_total{{status="429",code="rate_limited"}} {limited}"#
        )),
        "{metrics}"
    );

    // The allowance refills: after Retry-After, the token posts again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, answer) = ingest.post(&report("LATER", 1)).await;
    assert_eq!(status, 201, "{answer}");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refused_before_its_rate_is_counted_and_no_limit_is_the_default() {
    // Default settings: no limit, 20 posts at once all go through.
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    for i in 0..20 {
        assert_eq!(ingest.post(&report(&format!("N{i}"), 1)).await.0, 201);
    }
    ingest.stop().await;

    // With a limit of one report, unknown tokens get 401 (they have no
    // bucket to empty), and the valid token still has its one report.
    let mut settings = settings();
    settings.rate_limit = Some(RateLimit {
        per_second: 0.5,
        burst: 1,
    });
    let ingest = Ingest::start_with(RedisChoice::Standalone, settings).await;
    for _ in 0..5 {
        assert_eq!(ingest.post_with("et_unknown", &report("U", 1)).await.0, 401);
    }
    assert_eq!(ingest.post(&report("U", 1)).await.0, 201);
    let (status, answer) = ingest.post(&report("U2", 1)).await;
    assert_eq!(status, 429, "{answer}");
    ingest.stop().await;
}
