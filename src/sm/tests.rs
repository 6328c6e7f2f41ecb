//! Unit and property tests of the key rules, without disk or network.

use proptest::prelude::*;

use super::model::*;
use super::query::{Answer, KeyFilter, Query};
use super::*;
use crate::secret::hash;

const T0: Millis = 1_700_000_000_000;
/// The term every fixture entry is proposed in.
const TERM: u64 = 3;

struct Fixture {
    store: KeyStore,
    /// The committed rows under `store`, as the storage adapter would keep them.
    rows: std::sync::Arc<backing::MemRows>,
    admin: Actor,
    operator: Actor,
    index: u64,
    request: u64,
}

fn cred(id: &str) -> NewCredential {
    NewCredential { id: id.to_string(), hash: hash(id) }
}

fn actor(id: &str) -> Actor {
    Actor::ApiKey { api_key_id: id.to_string(), secret_hash: hash(id) }
}

impl Fixture {
    fn new() -> Self {
        let rows = std::sync::Arc::new(backing::MemRows::default());
        let mut f = Fixture {
            store: KeyStore::open(rows.clone()).unwrap(),
            rows,
            admin: actor("api_admin"),
            operator: actor("api_op"),
            index: 0,
            request: 0,
        };
        let init = Op::InitCluster {
            org_id: "org_a".into(),
            org_name: "first".into(),
            operator_key: cred("api_op"),
            admin_key: cred("api_admin"),
        };
        f.run(T0, Actor::Anonymous, init).unwrap();
        f
    }

    fn run(&mut self, time: Millis, actor: Actor, op: Op) -> Outcome {
        self.request += 1;
        let cmd = Command { request_id: format!("r{}", self.request), actor, op };
        self.run_cmd(time, cmd)
    }

    fn run_cmd(&mut self, time: Millis, cmd: Command) -> Outcome {
        self.index += 1;
        let at = EntryStamp { index: self.index, term: TERM, time };
        let outcome = self.store.apply_entry(at, &[cmd]).remove(0);
        assert_eq!(self.store.fault(), None);
        self.rows.write(self.store.take_writes().unwrap());
        // A proven enrolment also answers the machine's state; the tests of approval read it
        // from the machine, the others compare enrolments.
        match outcome {
            Ok(OpOk::EnrolledAs { enrolled, .. }) => Ok(OpOk::Enrolled(enrolled)),
            other => other,
        }
    }

    fn create(&mut self, time: Millis, id: &str, reusable: bool, max_uses: Option<u64>) -> AuthKeyRecord {
        let spec =
            AuthKeySpec::new(reusable, false, 3600, vec!["tag:laptop".into()], "d".into(), max_uses, MIN_EXPIRY_SECS)
                .unwrap();
        let op = Op::CreateAuthKey { org_id: "org_a".into(), key: cred(id), spec };
        match self.run(time, self.admin.clone(), op) {
            Ok(OpOk::AuthKey(record)) => record,
            other => panic!("create failed: {other:?}"),
        }
    }

    /// Enrols machine `node`; the same arguments make the identical command (a retry).
    fn enrol(&mut self, time: Millis, key_id: &str, node: &str) -> Outcome {
        self.enrol_attempt(time, key_id, node, "")
    }

    /// A new enrolment request from machine `node`: fresh machine id and node key.
    fn enrol_attempt(&mut self, time: Millis, key_id: &str, node: &str, attempt: &str) -> Outcome {
        let op = Op::EnrolProven {
            auth_key_id: key_id.into(),
            auth_key_hash: hash(key_id),
            hostname: "host".into(),
            node_public_key: node.into(),
            machine_id: format!("m_{node}{attempt}"),
            node_key: cred(&format!("{node}{attempt}")),
            // The machine's clock is right: its proof is as fresh as the cluster's time.
            proved_at: time.max(self.store.clock()),
        };
        self.run(time, Actor::Anonymous, op)
    }

    /// A store opened over a copy of the committed rows, as after a restart.
    fn reopen(&self) -> KeyStore {
        let copy = std::sync::Arc::new(backing::MemRows::default());
        copy.write(self.rows.all().into_iter().map(|(k, v)| (k, Some(v))).collect());
        KeyStore::open(copy).unwrap()
    }

    fn key(&self, key_id: &str) -> AuthKeyRecord {
        self.store.auth_key(key_id).unwrap()
    }
}

#[test]
fn one_shot_key_enrols_exactly_once() {
    let mut f = Fixture::new();
    f.create(T0, "ak_one", false, None);
    assert!(matches!(f.enrol(T0 + 1, "ak_one", "n1"), Ok(OpOk::Enrolled(_))));
    assert_eq!(f.enrol(T0 + 2, "ak_one", "n2"), Err(OpError::KeyUsed));
    assert_eq!(f.key("ak_one").uses, 1);
    assert_eq!(f.key("ak_one").state(T0 + 3), KeyState::Used);
}

#[test]
fn retried_enrolment_of_the_same_node_returns_the_same_machine_and_spends_nothing() {
    let mut f = Fixture::new();
    f.create(T0, "ak_one", false, None);
    let first = f.enrol(T0 + 1, "ak_one", "n1").unwrap();
    let again = f.enrol(T0 + 2, "ak_one", "n1").unwrap();
    let (OpOk::Enrolled(a), OpOk::Enrolled(b)) = (first, again) else { panic!() };
    assert_eq!(a.machine_id, b.machine_id);
    assert!(!a.repeated && b.repeated);
    assert_eq!(f.key("ak_one").uses, 1);
}

#[test]
fn max_uses_caps_a_reusable_key() {
    let mut f = Fixture::new();
    f.create(T0, "ak_five", true, Some(5));
    for n in 0..5 {
        assert!(f.enrol(T0 + 1, "ak_five", &format!("n{n}")).is_ok());
    }
    assert_eq!(f.enrol(T0 + 1, "ak_five", "n9"), Err(OpError::KeyExhausted));
    assert_eq!(f.key("ak_five").uses, 5);
    assert_eq!(f.key("ak_five").state(T0 + 1), KeyState::Exhausted);
}

#[test]
fn reusable_key_without_limit_counts_uses() {
    let mut f = Fixture::new();
    f.create(T0, "ak_many", true, None);
    for n in 0..20 {
        assert!(f.enrol(T0 + n, "ak_many", &format!("n{n}")).is_ok());
    }
    assert_eq!(f.key("ak_many").uses, 20);
    assert_eq!(f.key("ak_many").last_used_at, Some(T0 + 19));
}

#[test]
fn the_identical_enrolment_applied_again_after_a_revoke_answers_as_the_first_did() {
    // A node forwarded an enrolment, gave up on that leader, and sent the same command to the
    // next one; both copies committed, with a revoke in between. The enrolment happened, so
    // the second copy must not answer key_revoked.
    let mut f = Fixture::new();
    f.create(T0, "ak_r", true, None);
    let first = f.enrol(T0 + 1, "ak_r", "n1");
    let OpOk::Enrolled(first) = first.unwrap() else { panic!("enrolled") };
    let revoke = Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId("ak_r".into()) };
    f.run(T0 + 2, f.admin.clone(), revoke).unwrap();
    let OpOk::Enrolled(again) = f.enrol(T0 + 3, "ak_r", "n1").unwrap() else { panic!("enrolled") };
    assert_eq!(again.machine_id, first.machine_id);
    assert!(again.repeated);
    assert_eq!(f.key("ak_r").uses, 1);
}

#[test]
fn revoked_key_enrols_nothing_and_keeps_existing_machines() {
    let mut f = Fixture::new();
    f.create(T0, "ak_r", true, None);
    f.enrol(T0 + 1, "ak_r", "n1").unwrap();
    let revoke = Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId("ak_r".into()) };
    let first = f.run(T0 + 2, f.admin.clone(), revoke.clone()).unwrap();
    let second = f.run(T0 + 3, f.admin.clone(), revoke).unwrap();
    assert_eq!(first, second, "revoking twice answers the same record");
    assert_eq!(f.enrol(T0 + 4, "ak_r", "n2"), Err(OpError::KeyRevoked));
    assert_eq!(f.enrol_attempt(T0 + 4, "ak_r", "n1", "-again"), Err(OpError::KeyRevoked));
    assert!(f.store.machines.contains_key("m_n1"));
    assert_eq!(f.key("ak_r").state(T0 + 5), KeyState::Revoked);
}

#[test]
fn expired_key_enrols_nothing() {
    let mut f = Fixture::new();
    let key = f.create(T0, "ak_e", true, None);
    assert!(f.enrol(key.expires_at - 1, "ak_e", "n1").is_ok());
    assert_eq!(f.enrol(key.expires_at, "ak_e", "n2"), Err(OpError::KeyExpired));
    assert_eq!(f.key("ak_e").state(key.expires_at), KeyState::Expired);
}

#[test]
fn time_never_moves_backwards() {
    let mut f = Fixture::new();
    let key = f.create(T0, "ak_e", true, None);
    // A new leader with a slow clock stamps an earlier time; the store keeps its clock.
    f.enrol(key.expires_at + 10, "ak_e", "n1").unwrap_err();
    assert_eq!(f.enrol(T0 + 1, "ak_e", "n2"), Err(OpError::KeyExpired));
    assert_eq!(f.store.clock(), key.expires_at + 10);
}

#[test]
fn wrong_secret_and_unknown_key_are_refused_alike() {
    let mut f = Fixture::new();
    f.create(T0, "ak_x", false, None);
    let op = Op::EnrolProven {
        auth_key_id: "ak_x".into(),
        auth_key_hash: hash("wrong"),
        hostname: "h".into(),
        node_public_key: "n".into(),
        machine_id: "m_1".into(),
        node_key: cred("n"),
        proved_at: T0,
    };
    assert_eq!(f.run(T0, Actor::Anonymous, op), Err(OpError::InvalidAuthKey));
    assert_eq!(f.enrol(T0, "ak_missing", "n"), Err(OpError::InvalidAuthKey));
    assert_eq!(f.key("ak_x").uses, 0);
}

#[test]
fn org_keys_reach_only_their_org() {
    let mut f = Fixture::new();
    let op = f.operator.clone();
    f.run(T0, op.clone(), Op::CreateOrg { org_id: "org_b".into(), name: "b".into() }).unwrap();
    f.run(T0, op, Op::CreateApiKey { org_id: "org_b".into(), key: cred("api_b"), description: String::new() }).unwrap();
    f.create(T0, "ak_a", true, None);
    let other = actor("api_b");
    let revoke = Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId("ak_a".into()) };
    assert!(matches!(f.run(T0, other.clone(), revoke), Err(OpError::Forbidden(_))));
    // Naming its own org does not reach another org's key either.
    let sneaky = Op::RevokeAuthKey { org_id: "org_b".into(), selector: KeySelector::KeyId("ak_a".into()) };
    assert!(matches!(f.run(T0, other.clone(), sneaky), Err(OpError::NotFound(_))));
    let list = Query::ListAuthKeys { org_id: "org_a".into(), limit: 10, after_seq: None };
    assert!(matches!(f.store.query(&other, &list), Err(OpError::Forbidden(_))));
    assert!(f.key("ak_a").revoked_at.is_none());
    // An org key cannot administer orgs; a bad secret is unauthorised.
    let admin = f.admin.clone();
    assert!(matches!(
        f.run(T0, admin, Op::CreateOrg { org_id: "org_c".into(), name: "c".into() }),
        Err(OpError::Forbidden(_))
    ));
    let forged = Actor::ApiKey { api_key_id: "api_admin".into(), secret_hash: hash("guess") };
    assert_eq!(f.store.query(&forged, &list), Err(OpError::Unauthorized));
}

#[test]
fn revoked_api_key_is_refused() {
    let mut f = Fixture::new();
    let op = f.operator.clone();
    f.run(T0, op.clone(), Op::CreateApiKey { org_id: "org_a".into(), key: cred("api_2"), description: String::new() })
        .unwrap();
    f.run(T0, op, Op::RevokeApiKey { api_key_id: "api_2".into() }).unwrap();
    let list = Query::ListAuthKeys { org_id: "org_a".into(), limit: 10, after_seq: None };
    assert_eq!(f.store.query(&actor("api_2"), &list), Err(OpError::Unauthorized));
}

#[test]
fn a_retried_request_id_applies_once_and_a_reused_one_is_refused() {
    let mut f = Fixture::new();
    let spec = AuthKeySpec::new(false, false, 3600, vec![], String::new(), None, MIN_EXPIRY_SECS).unwrap();
    let cmd = Command {
        request_id: "same".into(),
        actor: f.admin.clone(),
        op: Op::CreateAuthKey { org_id: "org_a".into(), key: cred("ak_1"), spec: spec.clone() },
    };
    let first = f.run_cmd(T0, cmd.clone());
    let again = f.run_cmd(T0 + 5, cmd.clone());
    assert_eq!(first, again);
    // The client sent it again: the receiving node made a new key id and secret for it. The
    // first record answers, and nothing is created.
    let mut resent = cmd.clone();
    resent.op = Op::CreateAuthKey { org_id: "org_a".into(), key: cred("ak_2"), spec };
    assert_eq!(f.run_cmd(T0 + 6, resent), first);
    assert!(f.store.auth_key("ak_2").is_none());
    // Another request under the same id is refused.
    let mut different = cmd.clone();
    let other = AuthKeySpec::new(true, false, 3600, vec![], String::new(), None, MIN_EXPIRY_SECS).unwrap();
    different.op = Op::CreateAuthKey { org_id: "org_a".into(), key: cred("ak_3"), spec: other };
    assert_eq!(f.run_cmd(T0 + 7, different.clone()), Err(OpError::RequestIdReused("same".into())));
    assert!(f.store.auth_key("ak_3").is_none());
    // Past the window, before any entry made apply forget it, the leader's pre-check does not
    // refuse it either: apply forgets first.
    assert_eq!(f.store.admit(&different, T0 + REQUEST_MEMORY_MS + 1), Ok(()));
    // After the memory window the id is forgotten.
    f.run(T0 + REQUEST_MEMORY_MS + 1, Actor::Anonymous, Op::CreateOrg { org_id: "x".into(), name: "x".into() })
        .unwrap_err();
    let row = rows::request_row("api_admin", "same");
    assert!(!f.store.rows.contains(&row));
    assert!(!f.rows.all().iter().any(|(key, _)| key.starts_with(&rows::request_expiry_prefix())
        && rows::parse_request_expiry(key).is_some_and(|(_, expires)| expires == row)));
}

#[test]
fn init_applies_once() {
    let mut f = Fixture::new();
    let again = Op::InitCluster {
        org_id: "org_z".into(),
        org_name: "z".into(),
        operator_key: cred("api_z1"),
        admin_key: cred("api_z2"),
    };
    assert_eq!(f.run(T0, Actor::Anonymous, again), Err(OpError::AlreadyInitialized));
    assert!(!f.store.orgs.contains_key("org_z"));
}

#[test]
fn revoke_by_prefix_needs_a_unique_match() {
    let mut f = Fixture::new();
    f.create(T0, "ak_abc111", true, None);
    f.create(T0, "ak_abc222", true, None);
    let by = |p: &str| Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::IdPrefix(p.into()) };
    assert!(matches!(f.run(T0, f.admin.clone(), by("abc")), Err(OpError::Ambiguous(_))));
    assert!(f.run(T0, f.admin.clone(), by("abc1")).is_ok());
    assert!(f.key("ak_abc111").revoked_at.is_some());
    assert!(f.key("ak_abc222").revoked_at.is_none());
    assert!(matches!(f.run(T0, f.admin.clone(), by("zzz")), Err(OpError::NotFound(_))));
}

#[test]
fn listing_pages_in_creation_order() {
    let mut f = Fixture::new();
    for n in 0..7 {
        f.create(T0, &format!("ak_{n}"), true, None);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let q = Query::ListAuthKeys { org_id: "org_a".into(), limit: 3, after_seq: after };
        let Ok(Answer::AuthKeys { keys, next_after_seq, .. }) = f.store.query(&f.admin, &q) else { panic!() };
        seen.extend(keys.into_iter().map(|k| k.key_id));
        match next_after_seq {
            Some(s) => after = Some(s),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|n| format!("ak_{n}")).collect::<Vec<_>>());
}

#[test]
fn a_filtered_listing_answers_only_matches_and_pages_through_them() {
    let mut f = Fixture::new();
    for n in 0..9 {
        f.create(T0, &format!("ak_{n}"), n % 3 == 0, None);
    }
    f.enrol(T0, "ak_1", "node-1").unwrap();
    let page = |f: &Fixture, filter: &KeyFilter, limit: usize, after_seq: Option<u64>| {
        let q = Query::ListAuthKeysWhere { org_id: "org_a".into(), limit, after_seq, filter: filter.clone() };
        let Ok(Answer::AuthKeys { keys, next_after_seq, .. }) = f.store.query(&f.admin, &q) else { panic!() };
        (keys.into_iter().map(|k| k.key_id).collect::<Vec<_>>(), next_after_seq)
    };
    let all = |f: &Fixture, filter: &KeyFilter| {
        let (mut seen, mut after) = (Vec::new(), None);
        loop {
            let (keys, next) = page(f, filter, 2, after);
            seen.extend(keys);
            match next {
                Some(s) => after = Some(s),
                None => return seen,
            }
        }
    };
    let reusable = KeyFilter { reusable: Some(true), ..KeyFilter::default() };
    assert_eq!(all(&f, &reusable), ["ak_0", "ak_3", "ak_6"]);
    let used = KeyFilter { state: Some(KeyState::Used), ..KeyFilter::default() };
    assert_eq!(all(&f, &used), ["ak_1"]);
    let search = KeyFilter { search: Some("ak_7".into()), ..KeyFilter::default() };
    assert_eq!(all(&f, &search), ["ak_7"]);
    let untagged = KeyFilter { tag: Some("tag:server".into()), ..KeyFilter::default() };
    assert_eq!(all(&f, &untagged), Vec::<String>::new());
    // A page that ends on its limit says where to go on; the last page does not.
    assert_eq!(page(&f, &reusable, 3, None).1, Some(f.key("ak_6").seq));
    assert_eq!(page(&f, &reusable, 4, None).1, None);
    // Another org's key cannot be listed by this org's filter.
    let other = Query::ListAuthKeysWhere { org_id: "org_b".into(), limit: 5, after_seq: None, filter: reusable };
    assert!(f.store.query(&f.admin, &other).is_err());
}

#[test]
fn a_filtered_page_looks_at_no_more_than_max_scan_keys_and_says_where_to_go_on() {
    use super::query::MAX_SCAN;
    let mut f = Fixture::new();
    for n in 0..MAX_SCAN + 5 {
        f.create(T0, &format!("ak_{n:05}"), false, None);
    }
    let nothing = KeyFilter { search: Some("no such key".into()), ..KeyFilter::default() };
    let page = |after_seq| {
        let q = Query::ListAuthKeysWhere { org_id: "org_a".into(), limit: 10, after_seq, filter: nothing.clone() };
        let Ok(Answer::AuthKeys { keys, next_after_seq, .. }) = f.store.query(&f.admin, &q) else { panic!() };
        (keys.len(), next_after_seq)
    };
    // The first page stops at the bound, empty, with the last key it looked at as its cursor.
    let last_looked_at = f.store.auth_key(&format!("ak_{:05}", MAX_SCAN - 1)).unwrap().seq;
    assert_eq!(page(None), (0, Some(last_looked_at)));
    // The rest fit in one more page, which ends the listing.
    assert_eq!(page(Some(last_looked_at)), (0, None));
}

#[test]
fn queries_an_older_leader_cannot_read_say_so() {
    let filtered =
        Query::ListAuthKeysWhere { org_id: "o".into(), limit: 1, after_seq: None, filter: KeyFilter::default() };
    assert_eq!((filtered.since(), Query::WhoAmI.since()), (2, 2));
    assert_eq!(Query::ListAuthKeys { org_id: "o".into(), limit: 1, after_seq: None }.since(), 1);
    assert!(filtered.since() <= super::query::QUERIES, "this build must read every query it makes");
}

#[test]
fn whoami_answers_the_calling_key_and_refuses_others() {
    let f = Fixture::new();
    let Ok(Answer::ApiKey(me)) = f.store.query(&f.admin, &Query::WhoAmI) else { panic!() };
    let Actor::ApiKey { api_key_id, .. } = &f.admin else { panic!() };
    assert_eq!(&me.api_key_id, api_key_id);
    assert_eq!(f.store.query(&actor("api_nobody"), &Query::WhoAmI), Err(OpError::Unauthorized));
    assert_eq!(f.store.query(&Actor::Anonymous, &Query::WhoAmI), Err(OpError::Unauthorized));
}

#[test]
fn specs_are_validated() {
    let ok = |e: u64, tags: Vec<&str>, reusable: bool, max: Option<u64>| {
        AuthKeySpec::new(
            reusable,
            false,
            e,
            tags.into_iter().map(String::from).collect(),
            String::new(),
            max,
            MIN_EXPIRY_SECS,
        )
    };
    assert!(ok(300, vec!["tag:a-1"], false, None).is_ok());
    assert_eq!(ok(299, vec![], false, None).unwrap_err().field, "expires_in");
    assert_eq!(ok(MAX_EXPIRY_SECS + 1, vec![], false, None).unwrap_err().field, "expires_in");
    assert_eq!(ok(300, vec!["laptop"], false, None).unwrap_err().field, "tags");
    assert_eq!(ok(300, vec!["tag:Laptop"], false, None).unwrap_err().field, "tags");
    assert_eq!(ok(300, vec![], false, Some(2)).unwrap_err().field, "max_uses");
    assert_eq!(ok(300, vec![], true, Some(0)).unwrap_err().field, "max_uses");
    let long = AuthKeySpec::new(false, false, 300, vec![], "x".repeat(257), None, MIN_EXPIRY_SECS);
    assert_eq!(long.unwrap_err().field, "description");
}

#[test]
fn a_reopened_store_holds_the_same_state() {
    let mut f = Fixture::new();
    f.create(T0, "ak_1", true, Some(3));
    f.enrol(T0 + 1, "ak_1", "n1").unwrap();
    let mut reopened = f.reopen();
    assert!(reopened.take_writes().unwrap().is_empty(), "a current layout needs no upgrade");
    assert_eq!(reopened.meta, f.store.meta);
    assert_eq!(reopened.orgs, f.store.orgs);
    assert_eq!(reopened.api_keys, f.store.api_keys);
    assert_eq!(reopened.machines, f.store.machines);
    assert_eq!(reopened.machine_by_key_and_node, f.store.machine_by_key_and_node);
    assert_eq!(reopened.machine_by_node_key, f.store.machine_by_node_key);
    assert_eq!(reopened.auth_key("ak_1"), f.store.auth_key("ak_1"));
    assert_eq!(reopened.enrolments_of("ak_1"), f.store.enrolments_of("ak_1"));
}

#[test]
fn rows_of_the_first_layout_get_their_index_rows() {
    let mut f = Fixture::new();
    f.create(T0, "ak_1", false, None);
    f.create(T0, "ak_2", false, None);
    // Layout 1 had no index rows and no layout row.
    let old: Vec<_> = f
        .rows
        .all()
        .into_iter()
        .filter(|(k, _)| !matches!(k[0], b'K' | b'R' | b'V'))
        .map(|(k, v)| (k, Some(v)))
        .collect();
    let copy = std::sync::Arc::new(backing::MemRows::default());
    copy.write(old.into_iter().collect());
    let mut reopened = KeyStore::open(copy.clone()).unwrap();
    copy.write(reopened.take_writes().unwrap());
    assert_eq!(copy.all(), f.rows.all());
    let list = Query::ListAuthKeys { org_id: "org_a".into(), limit: 10, after_seq: None };
    assert_eq!(reopened.query(&f.admin, &list), f.store.query(&f.admin, &list));
}

// ---- Property test: random interleavings never break a key's rules. ----

#[derive(Debug, Clone)]
enum Step {
    Create { key: u8, reusable: bool, max_uses: Option<u8>, expiry_secs: u64 },
    Enrol { key: u8, node: u8 },
    Revoke { key: u8 },
    Advance { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0u8..4, any::<bool>(), proptest::option::of(1u8..4), 300u64..900)
            .prop_map(|(key, reusable, max_uses, expiry_secs)| Step::Create { key, reusable, max_uses: max_uses.filter(|_| reusable), expiry_secs }),
        5 => (0u8..4, 0u8..12).prop_map(|(key, node)| Step::Enrol { key, node }),
        1 => (0u8..4).prop_map(|key| Step::Revoke { key }),
        1 => (0u64..400_000).prop_map(|ms| Step::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn interleavings_respect_limits_revocation_and_expiry(steps in proptest::collection::vec(step(), 1..80)) {
        let mut f = Fixture::new();
        let mut now = T0;
        let mut log: Vec<(Millis, Command)> = Vec::new();
        let mut revoked_at: std::collections::BTreeMap<String, Millis> = Default::default();
        let mut successes: std::collections::BTreeMap<String, std::collections::BTreeSet<u8>> = Default::default();
        for s in steps {
            let (op, actor) = match s {
                Step::Advance { ms } => { now += ms; continue; }
                Step::Create { key, reusable, max_uses, expiry_secs } => {
                    let spec = AuthKeySpec::new(reusable, false, expiry_secs, vec![], String::new(), max_uses.map(u64::from), MIN_EXPIRY_SECS).unwrap();
                    (Op::CreateAuthKey { org_id: "org_a".into(), key: cred(&format!("ak_{key}")), spec }, f.admin.clone())
                }
                Step::Enrol { key, node } => (Op::EnrolProven {
                    auth_key_id: format!("ak_{key}"), auth_key_hash: hash(&format!("ak_{key}")), hostname: "h".into(),
                    node_public_key: format!("{node}"), machine_id: format!("m_{key}_{node}_{}", log.len()), node_key: cred("n"),
                    proved_at: now,
                }, Actor::Anonymous),
                Step::Revoke { key } => (Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId(format!("ak_{key}")) }, f.admin.clone()),
            };
            f.request += 1;
            let cmd = Command { request_id: format!("p{}", f.request), actor, op };
            log.push((now, cmd.clone()));
            let outcome = f.run_cmd(now, cmd.clone());
            if let (Op::EnrolProven { auth_key_id, node_public_key, .. }, Ok(OpOk::Enrolled(e))) = (&cmd.op, &outcome) {
                let key = f.key(auth_key_id);
                // Never after a revoke, never at or past expiry (a repeat is not a new enrolment).
                prop_assert!(!revoked_at.contains_key(auth_key_id));
                if !e.repeated {
                    prop_assert!(f.store.clock() < key.expires_at);
                    successes.entry(auth_key_id.clone()).or_default().insert(node_public_key.parse().unwrap());
                }
            }
            if let (Op::RevokeAuthKey { selector: KeySelector::KeyId(id), .. }, Ok(_)) = (&cmd.op, &outcome) {
                revoked_at.entry(id.clone()).or_insert(now);
            }
        }
        for (key_id, nodes) in &successes {
            let key = f.key(key_id);
            let limit = if !key.reusable { 1 } else { key.max_uses.map_or(u64::MAX, u64::from) };
            prop_assert!(key.uses <= limit);
            prop_assert!(nodes.len() as u64 <= limit);
        }
        // Replaying the same log from scratch reaches the same state.
        let mut replay = Fixture::new();
        for (time, cmd) in log {
            let _ = replay.run_cmd(time, cmd);
        }
        prop_assert_eq!(replay.rows.all(), f.rows.all());
    }
}

// ---- Machines ----

fn node_actor(node: &str) -> Actor {
    Actor::NodeKey { node_key_id: node.to_string(), secret_hash: hash(node) }
}

fn admin_op(f: &mut Fixture, machine: &str, action: MachineAction) -> Outcome {
    let op = Op::MachineAdmin { org_id: "org_a".into(), machine_id: machine.into(), action };
    f.run(T0 + 10, f.admin.clone(), op)
}

#[test]
fn admin_actions_change_machines_and_deletion_is_recorded_in_the_history() {
    let mut f = Fixture::new();
    f.create(T0, "ak_r", true, None);
    f.enrol(T0 + 1, "ak_r", "n1").unwrap();
    let status = |f: &Fixture| f.store.query(&node_actor("n1"), &Query::MachineStatus);
    assert!(matches!(status(&f), Ok(Answer::Machine(m)) if m.state == MachineState::Active));
    admin_op(&mut f, "m_n1", MachineAction::Quarantine).unwrap();
    assert!(matches!(status(&f), Ok(Answer::Machine(m)) if m.state == MachineState::Quarantined));
    admin_op(&mut f, "m_n1", MachineAction::Unquarantine).unwrap();
    admin_op(&mut f, "m_n1", MachineAction::SetTags(vec!["tag:x".into()])).unwrap();
    assert!(matches!(status(&f), Ok(Answer::Machine(m)) if m.tags == ["tag:x"]));
    admin_op(&mut f, "m_n1", MachineAction::Delete).unwrap();
    assert_eq!(status(&f), Err(OpError::UnknownNodeKey));
    let history: Vec<_> = f.store.enrolments_of("ak_r");
    assert_eq!(history[0].deregistered.map(|d| d.reason), Some(DeregisterReason::Deleted));
    // The same device comes back only once an admin allows it, then as a new machine.
    let op = Op::EnrolProven {
        auth_key_id: "ak_r".into(),
        auth_key_hash: hash("ak_r"),
        hostname: "h".into(),
        node_public_key: "n1".into(),
        machine_id: "m_again".into(),
        node_key: cred("n1b"),
        proved_at: T0 + 20,
    };
    assert_eq!(f.run(T0 + 20, Actor::Anonymous, op.clone()), Err(OpError::MachineDeleted));
    assert_eq!(f.key("ak_r").uses, 1, "a refusal spends nothing");
    let allow = Op::AllowReenrol { org_id: "org_a".into(), node_public_key: "n1".into() };
    f.run(T0 + 21, f.admin.clone(), allow).unwrap();
    assert!(
        matches!(f.run(T0 + 22, Actor::Anonymous, op), Ok(OpOk::Enrolled(e)) if !e.repeated && e.machine_id == "m_again")
    );
}

#[test]
fn a_revoked_node_key_is_refused_until_the_machine_enrols_anew() {
    let mut f = Fixture::new();
    f.create(T0, "ak_one", false, None);
    f.enrol(T0 + 1, "ak_one", "n1").unwrap();
    admin_op(&mut f, "m_n1", MachineAction::RevokeNodeKey).unwrap();
    assert_eq!(f.store.query(&node_actor("n1"), &Query::MachineStatus), Err(OpError::NodeKeyRevoked));
    // A new request with the spent one-shot key does not bring it back: it must enrol anew
    // with a key an operator gives it.
    assert_eq!(f.enrol_attempt(T0 + 2, "ak_one", "n1", "-again"), Err(OpError::NodeKeyRevoked));
    // The identical first command applied again answers as it did, and revives nothing.
    assert!(matches!(f.enrol(T0 + 3, "ak_one", "n1"), Ok(OpOk::Enrolled(e)) if e.repeated));
    assert_eq!(f.store.query(&node_actor("n1"), &Query::MachineStatus), Err(OpError::NodeKeyRevoked));
    assert!(f.store.machines.contains_key("m_n1"), "the record is kept");
}

#[test]
fn only_ephemeral_machines_are_deregistered_for_inactivity_and_machines_act_on_themselves() {
    let mut f = Fixture::new();
    let spec = AuthKeySpec::new(true, true, 3600, vec![], String::new(), None, MIN_EXPIRY_SECS).unwrap();
    f.run(T0, f.admin.clone(), Op::CreateAuthKey { org_id: "org_a".into(), key: cred("ak_eph"), spec }).unwrap();
    f.create(T0, "ak_per", true, None);
    f.enrol(T0 + 1, "ak_eph", "e1").unwrap();
    f.enrol(T0 + 1, "ak_per", "p1").unwrap();
    // A sweep decided in another term (a deposed leader's, forwarded or committed late) does nothing.
    let stale = Op::SweepInactive { term: TERM - 1, machine_ids: vec!["m_e1".into()] };
    assert_eq!(f.run(T0 + 4, Actor::Anonymous, stale), Ok(OpOk::Count(0)));
    assert!(f.store.machines.contains_key("m_e1"));
    let sweep = Op::SweepInactive { term: TERM, machine_ids: vec!["m_e1".into(), "m_p1".into(), "m_gone".into()] };
    assert_eq!(f.run(T0 + 5, Actor::Anonymous, sweep), Ok(OpOk::Count(1)));
    assert!(!f.store.machines.contains_key("m_e1") && f.store.machines.contains_key("m_p1"));
    let history: Vec<_> = f.store.enrolments_of("ak_eph");
    assert_eq!(history[0].deregistered.map(|d| d.reason), Some(DeregisterReason::Inactive));

    let set = Op::MachineSelf { action: SelfAction::SetTags(vec![]) };
    assert!(matches!(f.run(T0 + 6, node_actor("p1"), set), Ok(OpOk::Machine(m)) if m.tags.is_empty()));
    let record = Op::RecordLastSeen { seen: vec![("m_p1".into(), T0 + 7), ("m_p1".into(), T0 + 3)] };
    f.run(T0 + 8, Actor::Anonymous, record).unwrap();
    assert_eq!(f.store.machines["m_p1"].last_seen, Some(T0 + 7), "last_seen never moves back");
    let logout = Op::MachineSelf { action: SelfAction::Logout };
    assert!(f.run(T0 + 9, node_actor("p1"), logout.clone()).is_ok());
    assert_eq!(f.run(T0 + 10, node_actor("p1"), logout), Err(OpError::UnknownNodeKey));
    // Another org's key cannot act on machines.
    let wrong = Op::MachineAdmin { org_id: "org_b".into(), machine_id: "m_p1".into(), action: MachineAction::Delete };
    assert!(f.run(T0 + 11, f.admin.clone(), wrong).is_err());
}

#[test]
fn a_sweep_leaves_a_machine_that_re_keyed_or_was_seen_since_it_was_judged() {
    let mut f = Fixture::new();
    let spec = AuthKeySpec::new(true, true, 3600, vec![], String::new(), None, MIN_EXPIRY_SECS).unwrap();
    f.run(T0, f.admin.clone(), Op::CreateAuthKey { org_id: "org_a".into(), key: cred("ak_eph"), spec }).unwrap();
    for node in ["e1", "e2", "e3"] {
        f.enrol(T0 + 1, "ak_eph", node).unwrap();
    }
    let judged: Vec<SweptMachine> =
        ["m_e1", "m_e2", "m_e3"].iter().map(|id| f.store.swept_machine(id).unwrap()).collect();
    // Between the decision and its commit: e1 enrols again (a re-key: a new node key), and the
    // leader persists a later last-seen time of e2.
    assert!(matches!(f.enrol_attempt(T0 + 2, "ak_eph", "e1", "-again"), Ok(OpOk::Enrolled(e)) if e.repeated));
    f.run(T0 + 3, Actor::Anonymous, Op::RecordLastSeen { seen: vec![("m_e2".into(), T0 + 3)] }).unwrap();
    // Another term's sweep changes nothing; this term's deletes only the machine unchanged.
    let stale = Op::SweepSilent { term: TERM + 1, machines: judged.clone() };
    assert_eq!(f.run(T0 + 4, Actor::Anonymous, stale), Ok(OpOk::Count(0)));
    let sweep = Op::SweepSilent { term: TERM, machines: judged };
    assert_eq!(f.run(T0 + 5, Actor::Anonymous, sweep), Ok(OpOk::Count(1)));
    assert!(f.store.machines.contains_key("m_e1") && f.store.machines.contains_key("m_e2"));
    assert!(!f.store.machines.contains_key("m_e3"));
}

#[test]
fn machine_indexes_rebuilt_on_load_match_the_live_ones() {
    let mut f = Fixture::new();
    f.create(T0, "ak_r", true, None);
    f.create(T0, "ak_fresh", true, None);
    f.enrol(T0 + 1, "ak_r", "n1").unwrap();
    admin_op(&mut f, "m_n1", MachineAction::RevokeNodeKey).unwrap();
    let again = Op::EnrolProven {
        auth_key_id: "ak_fresh".into(),
        auth_key_hash: hash("ak_fresh"),
        hostname: "h".into(),
        node_public_key: "n1".into(),
        machine_id: "m_n1b".into(),
        node_key: cred("n1b"),
        proved_at: T0 + 20,
    };
    f.run(T0 + 20, Actor::Anonymous, again).unwrap();
    let copy = f.reopen();
    assert_eq!(copy.machines, f.store.machines);
    assert_eq!(copy.machine_by_key_and_node, f.store.machine_by_key_and_node);
    assert_eq!(copy.machine_by_node_key, f.store.machine_by_node_key);
}

#[test]
fn node_ids_are_never_reused_and_survive_a_reopen() {
    let mut f = Fixture::new();
    let register = |id: u64, incarnation: &str| Op::RegisterNode { node_id: id, incarnation: incarnation.into() };
    // Founders register without being admitted; registering again is a no-op.
    assert!(f.run(T0, Actor::Anonymous, register(1, "inc-a")).is_ok());
    assert!(f.run(T0, Actor::Anonymous, register(1, "inc-a")).is_ok());
    // The same id from another data directory is refused.
    assert_eq!(f.run(T0, Actor::Anonymous, register(1, "inc-b")), Err(OpError::NodeIdUsed(1)));

    // Admitting needs the operator; a re-admit of an id that never started is allowed.
    assert!(matches!(f.run(T0, f.admin.clone(), Op::AdmitNode { node_id: 4 }), Err(OpError::Forbidden(_))));
    assert!(f.run(T0, f.operator.clone(), Op::AdmitNode { node_id: 4 }).is_ok());
    assert!(f.run(T0, f.operator.clone(), Op::AdmitNode { node_id: 4 }).is_ok());
    assert!(f.run(T0, Actor::Anonymous, register(4, "inc-c")).is_ok());
    assert_eq!(f.run(T0, f.operator.clone(), Op::AdmitNode { node_id: 4 }), Err(OpError::NodeIdUsed(4)));
    assert_eq!(f.run(T0, f.operator.clone(), Op::AdmitNode { node_id: 1 }), Err(OpError::NodeIdUsed(1)));

    // A retired id stays retired: not admitted, not registered, even by its own directory.
    assert!(f.run(T0 + 5, f.operator.clone(), Op::RetireNode { node_id: 1 }).is_ok());
    assert_eq!(f.run(T0, Actor::Anonymous, register(1, "inc-a")), Err(OpError::NodeRemoved(1)));
    assert_eq!(f.run(T0, f.operator.clone(), Op::AdmitNode { node_id: 1 }), Err(OpError::NodeIdUsed(1)));

    let reopened = KeyStore::open(f.rows.clone()).unwrap();
    assert_eq!(reopened.node_record(1).and_then(|r| r.removed_at), Some(T0 + 5));
    assert_eq!(reopened.node_record(4).and_then(|r| r.incarnation.clone()).as_deref(), Some("inc-c"));
}

fn enrol_command(key_id: &str, node: &str, request_id: &str) -> Command {
    Command {
        request_id: request_id.into(),
        actor: Actor::Anonymous,
        op: Op::EnrolProven {
            auth_key_id: key_id.into(),
            auth_key_hash: hash(key_id),
            hostname: "host".into(),
            node_public_key: node.into(),
            machine_id: format!("m_{node}"),
            node_key: cred(node),
            proved_at: T0,
        },
    }
}

#[test]
fn a_delayed_copy_of_an_enrolment_brings_back_no_removed_machine_and_spends_nothing() {
    for removal in ["logout", "delete"] {
        let mut f = Fixture::new();
        f.create(T0, "ak_r", true, None);
        let command = enrol_command("ak_r", "n1", "enrol-1");
        let first = f.run_cmd(T0 + 1, command.clone()).unwrap();
        match removal {
            "logout" => f.run(T0 + 2, node_actor("n1"), Op::MachineSelf { action: SelfAction::Logout }).unwrap(),
            _ => admin_op(&mut f, "m_n1", MachineAction::Delete).unwrap(),
        };
        assert!(!f.store.machines.contains_key("m_n1"));
        // The copy still in flight (sent to another leader by a node that gave up on the first)
        // commits now: it answers as the first did and changes nothing.
        let copy = f.run_cmd(T0 + 3, command.clone()).unwrap();
        assert_eq!(copy, first, "{removal}");
        assert!(!f.store.machines.contains_key("m_n1"), "{removal}: the machine stays removed");
        assert_eq!(f.key("ak_r").uses, 1, "{removal}: one request spends one use");
        assert_eq!(f.store.enrolments_of("ak_r").len(), 1);
        // The same machine enrolling again with a new request is a new enrolment.
        // (An admin's delete sticks until an admin allows the machine back.)
        let mut again = enrol_command("ak_r", "n1", "enrol-2");
        if let Op::EnrolProven { machine_id, node_key, proved_at, .. } = &mut again.op {
            *machine_id = "m_n1b".into();
            *node_key = cred("n1b");
            *proved_at = T0 + 4;
        }
        if removal == "delete" {
            assert_eq!(f.run_cmd(T0 + 4, again.clone()), Err(OpError::MachineDeleted));
            let allow = Op::AllowReenrol { org_id: "org_a".into(), node_public_key: "n1".into() };
            f.run(T0 + 4, f.admin.clone(), allow).unwrap();
            again.request_id = "enrol-3".into();
        }
        assert!(f.run_cmd(T0 + 4, again).is_ok());
        assert_eq!(f.key("ak_r").uses, 2);
    }
}

#[test]
fn a_client_retrying_an_enrolment_proves_again_and_gets_its_machine_back() {
    let mut f = Fixture::new();
    f.create(T0, "ak_one", false, None);
    let first = f.run_cmd(T0 + 1, enrol_command("ak_one", "n1", "same")).unwrap();
    // The same request id with other ids: the same proof presented again, refused.
    let mut replay = enrol_command("ak_one", "n1", "same");
    if let Op::EnrolProven { machine_id, node_key, .. } = &mut replay.op {
        *machine_id = "m_other".into();
        *node_key = cred("n1-replay");
    }
    assert_eq!(f.run_cmd(T0 + 2, replay), Err(OpError::ProofReplayed));
    // A retry (its first answer was lost) proves again under a new request id: the same
    // machine, a fresh node key, no use spent, and the re-key in the key's history.
    let mut retry = enrol_command("ak_one", "n1", "retry");
    if let Op::EnrolProven { machine_id, node_key, proved_at, .. } = &mut retry.op {
        *machine_id = "m_other".into();
        *node_key = cred("n1-retry");
        *proved_at = T0 + 2;
    }
    let (OpOk::Enrolled(a), Ok(OpOk::Enrolled(b))) = (first, f.run_cmd(T0 + 2, retry.clone())) else { panic!() };
    assert_eq!(a.machine_id, b.machine_id);
    assert!(b.repeated);
    assert_eq!(f.key("ak_one").uses, 1);
    let history = f.store.enrolments_of("ak_one");
    assert_eq!(history.len(), 2);
    assert!(history.iter().any(|e| e.rekey));
    // A delayed copy of an older attempt (an earlier proof) rotates nothing back.
    let mut older = enrol_command("ak_one", "n1", "older");
    if let Op::EnrolProven { machine_id, node_key, proved_at, .. } = &mut older.op {
        *machine_id = "m_older".into();
        *node_key = cred("n1-older");
        *proved_at = T0 + 1;
    }
    assert_eq!(f.run_cmd(T0 + 3, older), Err(OpError::ProofReplayed));
    assert_eq!(f.store.machines.get(&a.machine_id).unwrap().node_key_id, "n1-retry");
}

#[test]
fn an_entry_forgets_a_bounded_number_of_old_requests() {
    let mut f = Fixture::new();
    let burst = 10_000;
    assert!(burst > 2 * MAX_FORGET_PER_ENTRY && burst < 3 * MAX_FORGET_PER_ENTRY);
    for n in 0..burst {
        let op = Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId(format!("ak_{n}")) };
        f.run(T0 + 1, f.admin.clone(), op).unwrap_err();
    }
    let remembered =
        |f: &Fixture| f.rows.all().iter().filter(|(key, _)| key.starts_with(&rows::request_expiry_prefix())).count();
    assert_eq!(remembered(&f), burst + 1, "every refusal is remembered (and the init)");
    // Long after, each entry forgets at most its share; a few entries forget them all.
    let later = T0 + REQUEST_MEMORY_MS + 10;
    let quiet = |f: &mut Fixture, n: u64| f.run(later + n, Actor::Anonymous, Op::RecordLastSeen { seen: vec![] });
    quiet(&mut f, 0).unwrap();
    assert_eq!(remembered(&f), burst + 1 + 1 - MAX_FORGET_PER_ENTRY);
    quiet(&mut f, 1).unwrap();
    quiet(&mut f, 2).unwrap();
    assert_eq!(remembered(&f), 3, "only the three newest requests are left");
}

#[test]
fn the_legacy_enrolment_without_a_proof_is_refused_once_the_rules_require_one() {
    let mut f = Fixture::new();
    f.create(T0, "ak_r", true, None);
    let op = Op::Enrol {
        auth_key_id: "ak_r".into(),
        auth_key_hash: hash("ak_r"),
        hostname: "h".into(),
        node_public_key: "n1".into(),
        machine_id: "m_n1".into(),
        node_key: cred("n1"),
    };
    assert!(matches!(f.run(T0 + 1, Actor::Anonymous, op), Err(OpError::ProofInvalid(_))));
    assert_eq!(f.key("ak_r").uses, 0);
    // And a proof issued too long ago (by cluster time) is refused too.
    assert!(f.enrol_attempt(T0 + crate::proof::MAX_AGE_MS + 10, "ak_r", "n1", "late").is_ok());
    let mut stale = enrol_command("ak_r", "n2", "stale");
    if let Op::EnrolProven { proved_at, .. } = &mut stale.op {
        *proved_at = T0;
    }
    assert!(matches!(f.run_cmd(T0 + crate::proof::MAX_AGE_MS + 10, stale), Err(OpError::ProofInvalid(_))));
}

#[test]
fn the_retry_path_needs_a_key_still_in_date_and_not_revoked() {
    let mut f = Fixture::new();
    f.create(T0, "ak_r", true, None);
    f.enrol(T0 + 1, "ak_r", "n1").unwrap();
    let expired = T0 + 3600 * 1000 + 5;
    assert_eq!(f.enrol_attempt(expired, "ak_r", "n1", "-late"), Err(OpError::KeyExpired));
    let revoke = Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId("ak_r".into()) };
    f.run(T0 + 2, f.admin.clone(), revoke).unwrap();
    assert_eq!(f.enrol_attempt(T0 + 3, "ak_r", "n1", "-revoked"), Err(OpError::KeyRevoked));
    assert_eq!(f.store.machines["m_n1"].node_key_id, "n1", "the machine keeps its node key");
}

#[test]
fn admin_decisions_stick_through_logout_and_re_enrolment() {
    let mut f = Fixture::new();
    f.create(T0, "ak_r", true, None);
    f.create(T0, "ak_fresh", false, None);
    f.enrol(T0 + 1, "ak_r", "n1").unwrap();
    // Quarantined, logged out, enrolled again: still quarantined.
    admin_op(&mut f, "m_n1", MachineAction::Quarantine).unwrap();
    f.run(T0 + 11, node_actor("n1"), Op::MachineSelf { action: SelfAction::Logout }).unwrap();
    f.enrol_attempt(T0 + 12, "ak_r", "n1", "-2").unwrap();
    assert_eq!(f.store.machines["m_n1-2"].state, MachineState::Quarantined);
    // A quarantined machine cannot change its own tags.
    let set = Op::MachineSelf { action: SelfAction::SetTags(vec![]) };
    assert!(matches!(f.run(T0 + 13, node_actor("n1-2"), set), Err(OpError::MachineQuarantined(_))));
    admin_op(&mut f, "m_n1-2", MachineAction::Unquarantine).unwrap();
    // Its node key revoked: not back with the same auth key; a fresh key from an operator works.
    admin_op(&mut f, "m_n1-2", MachineAction::RevokeNodeKey).unwrap();
    assert_eq!(f.enrol_attempt(T0 + 14, "ak_r", "n1", "-3"), Err(OpError::NodeKeyRevoked));
    assert!(f.enrol_attempt(T0 + 15, "ak_fresh", "n1", "-4").is_ok());
    assert_eq!(f.store.machines["m_n1-4"].state, MachineState::Active);
    // The decisions are rows: a reopened store holds them.
    assert_eq!(f.reopen().decisions, f.store.decisions);
}

#[test]
fn a_machine_only_narrows_its_tags_within_what_was_granted() {
    let mut f = Fixture::new();
    let spec = AuthKeySpec::new(
        true,
        false,
        3600,
        vec!["tag:ci".into(), "tag:linux".into()],
        String::new(),
        None,
        MIN_EXPIRY_SECS,
    )
    .unwrap();
    f.run(T0, f.admin.clone(), Op::CreateAuthKey { org_id: "org_a".into(), key: cred("ak_ci"), spec }).unwrap();
    f.enrol(T0 + 1, "ak_ci", "n1").unwrap();
    let set =
        |tags: &[&str]| Op::MachineSelf { action: SelfAction::SetTags(tags.iter().map(|t| t.to_string()).collect()) };
    assert!(
        matches!(f.run(T0 + 2, node_actor("n1"), set(&["tag:prod"])), Err(OpError::TagNotGranted(m)) if m.contains("tag:prod"))
    );
    assert!(matches!(f.run(T0 + 3, node_actor("n1"), set(&["tag:ci"])), Ok(OpOk::Machine(m)) if m.tags == ["tag:ci"]));
    // Narrowed, it may widen back within the grant, not beyond.
    assert!(f.run(T0 + 4, node_actor("n1"), set(&["tag:ci", "tag:linux"])).is_ok());
    // An admin may widen; what it sets is the new grant.
    admin_op(&mut f, "m_n1", MachineAction::SetTags(vec!["tag:prod".into()])).unwrap();
    assert!(f.run(T0 + 12, node_actor("n1"), set(&["tag:prod"])).is_ok());
    assert!(matches!(f.run(T0 + 13, node_actor("n1"), set(&["tag:ci"])), Err(OpError::TagNotGranted(_))));
}

#[test]
fn a_key_that_is_not_pre_authorized_enrols_machines_pending_until_an_admin_approves() {
    let mut f = Fixture::new();
    let spec = AuthKeySpec::new(true, false, 3600, vec!["tag:x".into()], String::new(), None, MIN_EXPIRY_SECS).unwrap();
    let op = Op::CreateAuthKeyWith { org_id: "org_a".into(), key: cred("ak_ask"), spec, preauthorized: false };
    assert!(matches!(f.run(T0, f.admin.clone(), op), Ok(OpOk::AuthKey(k)) if !k.preauthorized));
    assert!(!f.reopen().auth_key("ak_ask").unwrap().preauthorized);
    f.request += 1;
    let cmd = enrol_command("ak_ask", "n1", "p1");
    let at = EntryStamp { index: 999, term: TERM, time: T0 + 1 };
    let outcome = f.store.apply_entry(at, &[cmd]).remove(0);
    f.rows.write(f.store.take_writes().unwrap());
    assert!(matches!(outcome, Ok(OpOk::EnrolledAs { state: MachineState::Pending, .. })));
    let status = |f: &Fixture| f.store.query(&node_actor("n1"), &Query::MachineStatus);
    assert!(matches!(status(&f), Ok(Answer::Machine(m)) if m.state == MachineState::Pending));
    let set = Op::MachineSelf { action: SelfAction::SetTags(vec![]) };
    assert_eq!(f.run(T0 + 2, node_actor("n1"), set), Err(OpError::PendingApproval));
    // Unquarantine does not approve.
    admin_op(&mut f, "m_n1", MachineAction::Quarantine).unwrap();
    admin_op(&mut f, "m_n1", MachineAction::Unquarantine).unwrap();
    assert!(matches!(status(&f), Ok(Answer::Machine(m)) if m.state == MachineState::Pending));
    admin_op(&mut f, "m_n1", MachineAction::Approve).unwrap();
    assert!(matches!(status(&f), Ok(Answer::Machine(m))
        if m.state == MachineState::Active && m.approved_by.as_deref() == Some("api_admin") && m.approved_at == Some(T0 + 10)));
    // A reject deletes, and the machine stays out like a deleted one.
    f.enrol(T0 + 20, "ak_ask", "n2").unwrap();
    admin_op(&mut f, "m_n2", MachineAction::Reject).unwrap();
    assert_eq!(f.enrol_attempt(T0 + 21, "ak_ask", "n2", "-again"), Err(OpError::MachineDeleted));
}

#[test]
fn a_tag_scoped_api_key_mints_only_within_its_tags_and_sets_machine_tags_only_within_them() {
    let mut f = Fixture::new();
    let grants = Grants { permissions: None, tags: Some(vec!["tag:ci".into()]) };
    let op = Op::CreateApiKeyWith {
        org_id: "org_a".into(),
        key: cred("api_ci"),
        description: "ci".into(),
        expires_in_secs: None,
        grants,
    };
    f.run(T0, f.operator.clone(), op).unwrap();
    let scoped = actor("api_ci");
    let spec = |tags: &[&str]| {
        AuthKeySpec::new(
            false,
            false,
            3600,
            tags.iter().map(|t| t.to_string()).collect(),
            String::new(),
            None,
            MIN_EXPIRY_SECS,
        )
        .unwrap()
    };
    let create =
        |key: &str, tags: &[&str]| Op::CreateAuthKey { org_id: "org_a".into(), key: cred(key), spec: spec(tags) };
    assert!(
        matches!(f.run(T0 + 1, scoped.clone(), create("ak_1", &["tag:prod"])), Err(OpError::ScopeDenied(m)) if m.contains("tag:prod"))
    );
    assert!(matches!(
        f.run(T0 + 1, scoped.clone(), create("ak_2", &["tag:ci", "tag:prod"])),
        Err(OpError::ScopeDenied(_))
    ));
    assert!(f.run(T0 + 1, scoped.clone(), create("ak_3", &["tag:ci"])).is_ok());
    f.enrol(T0 + 2, "ak_3", "n1").unwrap();
    let widen = Op::MachineAdmin {
        org_id: "org_a".into(),
        machine_id: "m_n1".into(),
        action: MachineAction::SetTags(vec!["tag:prod".into()]),
    };
    assert!(matches!(f.run(T0 + 3, scoped.clone(), widen), Err(OpError::ScopeDenied(_))));
    // Nor does it act on a machine granted tags outside its scope (approve, quarantine, …).
    let spec =
        AuthKeySpec::new(false, false, 3600, vec!["tag:prod".into()], String::new(), None, MIN_EXPIRY_SECS).unwrap();
    let op = Op::CreateAuthKeyWith { org_id: "org_a".into(), key: cred("ak_prod"), spec, preauthorized: false };
    f.run(T0 + 4, f.admin.clone(), op).unwrap();
    f.enrol(T0 + 5, "ak_prod", "n2").unwrap();
    for action in [MachineAction::Approve, MachineAction::Quarantine, MachineAction::Delete] {
        let op = Op::MachineAdmin { org_id: "org_a".into(), machine_id: "m_n2".into(), action };
        assert!(matches!(f.run(T0 + 6, scoped.clone(), op), Err(OpError::ScopeDenied(m)) if m.contains("tag:prod")));
    }
    assert_eq!(f.store.machines["m_n2"].state, MachineState::Pending);
    assert!(f.store.machines["m_n2"].tags.is_empty(), "no tags' rights while pending");
}

/// A fixture with a second API key scoped to `tag:ci` (every permission), and keys and
/// machines tagged `tag:ci`, `tag:prod` and untagged: what each key may do to each.
struct Scoped {
    f: Fixture,
    ci: Actor,
}

impl Scoped {
    fn new() -> Self {
        let mut f = Fixture::new();
        let grants = Grants { permissions: None, tags: Some(vec!["tag:ci".into()]) };
        let op = Op::CreateApiKeyWith {
            org_id: "org_a".into(),
            key: cred("api_ci"),
            description: "ci".into(),
            expires_in_secs: None,
            grants,
        };
        f.run(T0, f.operator.clone(), op).unwrap();
        for (id, tags) in [("ak_ci", vec!["tag:ci"]), ("ak_prod", vec!["tag:prod"]), ("ak_none", vec![])] {
            let tags: Vec<String> = tags.into_iter().map(String::from).collect();
            let spec = AuthKeySpec::new(true, false, 3600, tags, String::new(), None, MIN_EXPIRY_SECS).unwrap();
            let op = Op::CreateAuthKeyWith { org_id: "org_a".into(), key: cred(id), spec, preauthorized: false };
            f.run(T0, f.admin.clone(), op).unwrap();
        }
        Scoped { f, ci: actor("api_ci") }
    }

    /// A pending machine enrolled with `key` (fresh each time).
    fn machine(&mut self, key: &str, node: &str) -> String {
        self.f.enrol(T0 + 1, key, node).unwrap();
        format!("m_{node}")
    }

    /// A machine enrolled at `time` with a key tagged `tag` the admin makes then.
    fn machine_at(&mut self, time: Millis, tag: &str, node: &str) -> String {
        let key = format!("ak_{node}");
        let spec = AuthKeySpec::new(true, false, 3600, vec![tag.into()], String::new(), None, MIN_EXPIRY_SECS).unwrap();
        let op = Op::CreateAuthKeyWith { org_id: "org_a".into(), key: cred(&key), spec, preauthorized: false };
        self.f.run(time, self.f.admin.clone(), op).unwrap();
        self.f.enrol(time + 1, &key, node).unwrap();
        format!("m_{node}")
    }
}

#[test]
fn a_tag_scoped_key_acts_only_on_what_is_tagged_within_its_scope_untagged_included() {
    let actions = || {
        vec![
            MachineAction::Approve,
            MachineAction::Quarantine,
            MachineAction::Unquarantine,
            MachineAction::SetTags(vec!["tag:ci".into()]),
            MachineAction::RevokeNodeKey,
            MachineAction::Delete,
            MachineAction::Reject,
        ]
    };
    for (key, reachable) in [("ak_ci", true), ("ak_prod", false), ("ak_none", false)] {
        for (n, action) in actions().into_iter().enumerate() {
            let mut s = Scoped::new();
            let machine = s.machine(key, &format!("{key}-{n}"));
            let op = Op::MachineAdmin { org_id: "org_a".into(), machine_id: machine.clone(), action: action.clone() };
            let command = Command { request_id: "x".into(), actor: s.ci.clone(), op: op.clone() };
            let admitted = s.f.store.admit(&command, T0 + 5);
            let outcome = s.f.run(T0 + 5, s.ci.clone(), op.clone());
            assert_eq!(outcome.is_ok(), reachable, "tag:ci key, {action:?} on a machine of {key}: {outcome:?}");
            assert_eq!(admitted.is_ok(), reachable, "the leader's pre-check agrees: {admitted:?}");
            if !reachable {
                assert!(matches!(outcome, Err(OpError::ScopeDenied(_))), "{outcome:?}");
                assert_eq!(admitted, outcome.map(|_| ()), "the same refusal before Raft as after");
                // The org's unscoped key may.
                assert!(s.f.run(T0 + 6, s.f.admin.clone(), op).is_ok(), "admin, {action:?} on {key}");
            }
        }
        // Revoking the key itself.
        let mut s = Scoped::new();
        let machine = s.machine(key, &format!("{key}-listed"));
        let revoke = Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId(key.into()) };
        assert_eq!(s.f.run(T0 + 5, s.ci.clone(), revoke).is_ok(), reachable, "tag:ci key revoking {key}");
        // Listings and reads show it only what it reaches.
        let listed = |s: &Scoped| match s
            .f
            .store
            .query(&s.ci, &Query::ListAuthKeys { org_id: "org_a".into(), limit: 100, after_seq: None })
        {
            Ok(Answer::AuthKeys { keys, .. }) => keys.into_iter().map(|k| k.key_id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(listed(&s).contains(&key.to_string()), reachable, "{key} listed to the tag:ci key");
        let get = Query::GetAuthKeyPage { org_id: "org_a".into(), key_id: key.into(), limit: 10, after_seq: None };
        assert_eq!(s.f.store.query(&s.ci, &get).is_ok(), reachable, "{key} read by the tag:ci key");
        let machines = match s.f.store.query(&s.ci, &Query::ListMachines { org_id: "org_a".into() }) {
            Ok(Answer::Machines(m)) => m.into_iter().map(|m| m.machine_id).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(machines.contains(&machine), reachable, "a machine of {key} listed to the tag:ci key");
        // Letting a deleted machine back.
        s.f.run(
            T0 + 7,
            s.f.admin.clone(),
            Op::MachineAdmin { org_id: "org_a".into(), machine_id: machine, action: MachineAction::Delete },
        )
        .unwrap();
        let allow = Op::AllowReenrol { org_id: "org_a".into(), node_public_key: format!("{key}-listed") };
        assert_eq!(
            s.f.run(T0 + 8, s.ci.clone(), allow).is_ok(),
            reachable,
            "tag:ci key letting a machine of {key} back"
        );
    }
}

#[test]
fn re_keys_are_rate_limited_and_their_history_bounded_per_machine() {
    let mut f = Fixture::new();
    f.create(T0, "ak_one", false, None);
    f.enrol(T0 + 1, "ak_one", "n1").unwrap();
    // The spent one-shot key re-keys its machine (no use spent), up to the window's limit.
    let mut at = T0 + 2;
    for n in 0..keys::REKEYS_PER_MACHINE {
        at += 1;
        assert!(f.enrol_attempt(at, "ak_one", "n1", &format!("-r{n}")).is_ok(), "re-key {n}");
    }
    let refused = f.enrol_attempt(at + 1, "ak_one", "n1", "-over");
    assert!(matches!(refused, Err(OpError::TooManyRekeys(_, _))), "{refused:?}");
    // A window later, again; in all, only the last few re-keys stay in the key's history.
    for round in 0..3 {
        at += keys::REKEY_WINDOW_MS;
        for n in 0..keys::REKEYS_PER_MACHINE {
            at += 1;
            assert!(f.enrol_attempt(at, "ak_one", "n1", &format!("-w{round}-{n}")).is_ok());
        }
    }
    let history = f.store.enrolments_of("ak_one");
    let rekeys = history.iter().filter(|e| e.rekey).count();
    assert_eq!(rekeys, keys::REKEY_TAIL, "the key's history keeps the machine's last re-keys");
    assert_eq!(f.store.rekey_log("m_n1").total, u64::from(4 * keys::REKEYS_PER_MACHINE), "and counts them all");
    assert_eq!(f.key("ak_one").uses, 1, "no use spent");
}

#[test]
fn an_org_enrols_at_most_its_machine_limit_of_new_machines_a_day() {
    let mut f = Fixture::new();
    let limits =
        Op::SetOrgLimits { org_id: "org_a".into(), limits: Some(OrgLimits { auth_keys_per_day: 100, machines: 3 }) };
    f.run(T0, f.operator.clone(), limits).unwrap();
    f.create(T0, "ak_r", true, None);
    // A leaked reusable key: enrol, log out, enrol again — each a new machine and a history row.
    for n in 0..3 {
        let node = format!("n{n}");
        f.enrol(T0 + 1 + n, "ak_r", &node).unwrap();
        f.run(T0 + 1 + n, node_actor(&node), Op::MachineSelf { action: SelfAction::Logout }).unwrap();
    }
    let refused = f.enrol(T0 + 10, "ak_r", "n9");
    assert!(matches!(&refused, Err(OpError::QuotaExceeded(m)) if m.contains("today")), "{refused:?}");
    let admitted = f.store.admit(
        &Command {
            request_id: "z".into(),
            actor: Actor::Anonymous,
            op: Op::EnrolProven {
                auth_key_id: "ak_r".into(),
                auth_key_hash: hash("ak_r"),
                hostname: "h".into(),
                node_public_key: "n9".into(),
                machine_id: "m_n9z".into(),
                node_key: cred("n9z"),
                proved_at: T0 + 10,
            },
        },
        T0 + 10,
    );
    assert_eq!(admitted, refused.map(|_| ()), "refused before Raft alike");
    assert_eq!(f.store.enrolments_of("ak_r").len(), 3, "no row for the refusal");
    // The machines already enrolled re-key as before; the next day, new ones enrol again.
    let next_day = T0 + 86_400_000;
    f.create(next_day, "ak_s", true, None);
    assert!(f.enrol(next_day + 1, "ak_s", "n9").is_ok());
}

#[test]
fn an_orgs_decisions_are_bounded_by_its_machine_limit() {
    let mut f = Fixture::new();
    let limits =
        Op::SetOrgLimits { org_id: "org_a".into(), limits: Some(OrgLimits { auth_keys_per_day: 100, machines: 2 }) };
    f.run(T0, f.operator.clone(), limits).unwrap();
    f.create(T0, "ak_r", true, None);
    for node in ["n1", "n2"] {
        f.enrol(T0 + 1, "ak_r", node).unwrap();
        admin_op(&mut f, &format!("m_{node}"), MachineAction::Delete).unwrap();
    }
    // A day later (two new machines a day at most, like two at once).
    let next_day = T0 + 86_400_000;
    f.create(next_day, "ak_s", true, None);
    f.enrol(next_day + 1, "ak_s", "n3").unwrap();
    // A third decision is never refused (a compromised machine can always be contained): the
    // org forgets its oldest deletion instead.
    assert!(admin_op(&mut f, "m_n3", MachineAction::Quarantine).is_ok());
    assert_eq!(f.store.decisions.len(), 2, "decisions stay within the machine limit");
    assert!(!f.store.decisions.keys().any(|k| k.ends_with("\u{0}n1")), "the oldest deletion is forgotten");
    assert!(f.store.decisions.keys().any(|k| k.ends_with("\u{0}n2")), "the later one is kept");
}

#[test]
fn a_tag_scoped_keys_decisions_never_push_out_an_admins_deletion_outside_its_tags() {
    let mut s = Scoped::new();
    let limits =
        Op::SetOrgLimits { org_id: "org_a".into(), limits: Some(OrgLimits { auth_keys_per_day: 100, machines: 2 }) };
    s.f.run(T0, s.f.operator.clone(), limits).unwrap();
    // An admin deletes a compromised tag:prod machine; the tag:ci key then deletes its own.
    let prod = s.machine("ak_prod", "p1");
    let delete = |machine: &str| Op::MachineAdmin {
        org_id: "org_a".into(),
        machine_id: machine.to_string(),
        action: MachineAction::Delete,
    };
    s.f.run(T0 + 2, s.f.admin.clone(), delete(&prod)).unwrap();
    let mut day = T0;
    for n in 0..4 {
        day += 86_400_000;
        let machine = s.machine_at(day, "tag:ci", &format!("c{n}"));
        s.f.run(day + 1, s.ci.clone(), delete(&machine)).unwrap();
    }
    assert!(
        s.f.store.decisions.keys().any(|k| k.ends_with("\u{0}p1")),
        "the admin's deletion of the tag:prod machine is kept"
    );
    assert!(s.f.store.decisions.len() <= 3, "and the org's decisions stay bounded: {}", s.f.store.decisions.len());
    // The org's unscoped key does push it out (it could have allowed it back).
    for n in 0..2 {
        day += 86_400_000;
        let machine = s.machine_at(day, "tag:ci", &format!("a{n}"));
        s.f.run(day + 1, s.f.admin.clone(), delete(&machine)).unwrap();
    }
    assert!(!s.f.store.decisions.keys().any(|k| k.ends_with("\u{0}p1")), "the admin's own decisions make room");
}

#[test]
fn what_the_leader_refuses_before_raft_is_what_the_state_machine_refuses() {
    let mut f = Fixture::new();
    f.create(T0, "ak_one", false, None);
    f.enrol(T0 + 1, "ak_one", "n1").unwrap();
    f.create(T0, "ak_gone", true, None);
    f.run(
        T0 + 2,
        f.admin.clone(),
        Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId("ak_gone".into()) },
    )
    .unwrap();
    let enrol = |key: &str, node: &str, at: Millis| Op::EnrolProven {
        auth_key_id: key.into(),
        auth_key_hash: hash(key),
        hostname: "h".into(),
        node_public_key: node.into(),
        machine_id: format!("m_{node}x"),
        node_key: cred(&format!("{node}x")),
        proved_at: at,
    };
    let later = T0 + 2 * 3_600_000;
    let cases: Vec<(Actor, Op, Millis)> = vec![
        (Actor::Anonymous, enrol("ak_one", "n2", T0 + 5), T0 + 5), // spent
        (Actor::Anonymous, enrol("ak_gone", "n2", T0 + 5), T0 + 5), // revoked
        (Actor::Anonymous, enrol("ak_missing", "n2", T0 + 5), T0 + 5), // unknown
        (Actor::Anonymous, enrol("ak_one", "n2", T0 - 600_000), T0 + 5), // stale proof
        (
            f.admin.clone(),
            Op::MachineAdmin { org_id: "org_b".into(), machine_id: "m_n1".into(), action: MachineAction::Delete },
            T0 + 5,
        ),
        (
            f.admin.clone(),
            Op::MachineAdmin { org_id: "org_a".into(), machine_id: "m_nope".into(), action: MachineAction::Delete },
            T0 + 5,
        ),
        (f.admin.clone(), Op::CreateOrg { org_id: "org_z".into(), name: "z".into() }, T0 + 5),
        (
            actor("api_nobody"),
            Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId("ak_one".into()) },
            T0 + 5,
        ),
        // Last: cluster time only moves forward.
        (Actor::Anonymous, enrol("ak_one", "n1", later), later), // re-key, but expired
    ];
    for (n, (who, op, at)) in cases.into_iter().enumerate() {
        let command = Command { request_id: format!("p{n}"), actor: who, op };
        let admitted = f.store.admit(&command, at);
        assert!(admitted.is_err(), "case {n} is refused before Raft");
        let applied = f.run_cmd(at, command);
        assert_eq!(admitted, applied.map(|_| ()), "case {n}: the same refusal");
    }
}

#[test]
fn an_api_key_is_stamped_used_only_by_a_write_that_succeeded() {
    let mut f = Fixture::new();
    let revoke = Op::RevokeAuthKey { org_id: "org_a".into(), selector: KeySelector::KeyId("ak_nope".into()) };
    assert!(f.run(T0 + 5, f.admin.clone(), revoke).is_err());
    assert_eq!(f.store.api_keys["api_admin"].last_used_at, None, "a refused write leaves no trace");
    f.create(T0 + 6, "ak_a", true, None);
    assert_eq!(f.store.api_keys["api_admin"].last_used_at, Some(T0 + 6));
}
