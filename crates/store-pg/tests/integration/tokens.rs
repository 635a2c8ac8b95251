//! `store_pg::tokens` against a real PostgreSQL: what is stored, listed,
//! found and revoked. (Ingest's tests cover tokens end to end over HTTP.)

use store_pg::tokens::{self, TokenRecord};

use crate::support::Migrated;

#[test]
fn tokens_are_stored_listed_found_and_revoked_once() {
    let db = Migrated::new(1);
    let first = tokens::insert(&db.pool, &[1; 32], "e-one", Some("BB1"), Some("desk 1")).unwrap();
    let second = tokens::insert(&db.pool, &[2; 32], "e-two", None, None).unwrap();
    assert!(second > first);

    let all = tokens::list(&db.pool, None).unwrap();
    let ids: Vec<i64> = all.iter().map(|t| t.id).collect();
    assert_eq!(ids, [first, second], "every token, oldest first");
    let one: Vec<TokenRecord> = tokens::list(&db.pool, Some("e-two")).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, second);
    assert_eq!(
        (one[0].ballot_box_id.as_deref(), one[0].label.as_deref()),
        (None, None)
    );
    assert!(tokens::list(&db.pool, Some("e-none")).unwrap().is_empty());

    let found = tokens::find(&db.pool, &[1; 32]).unwrap().expect("stored");
    assert_eq!(found, all[0]);
    assert_eq!(found.election_id, "e-one");
    assert_eq!(found.ballot_box_id.as_deref(), Some("BB1"));
    assert_eq!(found.label.as_deref(), Some("desk 1"));
    assert_eq!(found.revoked_at, None);
    assert_eq!(tokens::find(&db.pool, &[3; 32]).unwrap(), None);

    assert!(tokens::revoke(&db.pool, first).unwrap());
    assert!(!tokens::revoke(&db.pool, first).unwrap(), "revoked already");
    assert!(
        !tokens::revoke(&db.pool, second + 100).unwrap(),
        "no such token"
    );
    let revoked = tokens::find(&db.pool, &[1; 32])
        .unwrap()
        .expect("still stored");
    let revoked_at = revoked.revoked_at.expect("revoked");
    assert!(revoked_at >= revoked.created_at);
}
