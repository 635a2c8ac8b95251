//! Access (issue #7): a token never works outside its election or ballot
//! box. A box-bound token is refused (403) for another box of its election
//! and for any box of another election; an election-wide token is refused
//! for another election; and neither refusal records or counts anything.

use crate::harness::{Ingest, RedisChoice, issue_token};

fn report(ballot_box: &str) -> String {
    format!(r#"{{"ballot_box_id":"{ballot_box}","city":"york","votes":{{"a":7}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_work_only_inside_their_election_and_ballot_box() {
    let ingest = Ingest::start(RedisChoice::Standalone).await;
    let election = ingest.election.as_str().to_owned();
    let other_election = format!("{election}-other");
    let other_url = format!("{}/v1/elections/{other_election}/reports", ingest.base);
    let (_, box_token) = issue_token(&ingest.pool, &election, Some("BB1"));
    let (_, other_box_token) = issue_token(&ingest.pool, &other_election, Some("BB1"));

    let post_to = |url: String, token: String, body: String| {
        let client = ingest.client.clone();
        async move {
            crate::harness::read(
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    // A box token, another box of its election.
    let answer = ingest.post_with(&box_token, &report("BB2")).await;
    assert_eq!(answer.0, 403, "{answer:?}");
    assert_eq!(answer.1["error"], "forbidden");
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains(r#"may only report for ballot box "BB1", not "BB2""#),
        "{answer:?}"
    );
    // A box token, its own box id, but another election.
    let answer = post_to(other_url.clone(), box_token.clone(), report("BB1")).await;
    assert_eq!(answer.0, 403, "{answer:?}");
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains(&format!(r#"not valid for election "{other_election}""#)),
        "{answer:?}"
    );
    // The other election's box token, for the same box id here.
    let answer = ingest.post_with(&other_box_token, &report("BB1")).await;
    assert_eq!(answer.0, 403, "{answer:?}");
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains(&format!(r#"not valid for election "{election}""#)),
        "{answer:?}"
    );
    // An election-wide token, another election.
    let answer = post_to(other_url, ingest.token.clone(), report("BB1")).await;
    assert_eq!(answer.0, 403, "{answer:?}");
    assert_eq!(answer.1["error"], "forbidden");

    // Nothing was recorded or counted in either election.
    assert_eq!(ingest.rows(), (0, 0));
    assert_eq!(
        crate::harness::count_rows(&ingest.pool, &other_election),
        (0, 0)
    );
    assert_eq!(ingest.national("a"), None);
    assert_eq!(
        ingest.get(&format!("election:{other_election}:party:a")),
        None
    );

    // Inside its scope the box token works.
    let answer = ingest.post_with(&box_token, &report("BB1")).await;
    assert_eq!(answer.0, 201, "{answer:?}");
    assert_eq!(ingest.national("a"), Some(7));
    ingest.stop().await;
}
